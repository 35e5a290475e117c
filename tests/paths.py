"""Where the tests find files from outside the repository."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# ../shared beside the checkout (as in CI); /work/shared on the developers' machines.
_SHARED = next((p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()),
               REPO.parent / "shared")
FIXTURES = _SHARED / "fixtures" / "vnncomp2024-test"
