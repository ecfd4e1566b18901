from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFDATA = ROOT.parent / "shared" / "refdata"


@pytest.fixture(scope="session")
def refdata() -> Path:
    if not REFDATA.is_dir():
        pytest.fail(f"reference data not found at {REFDATA} (the repo expects ../shared/refdata beside it)")
    return REFDATA
