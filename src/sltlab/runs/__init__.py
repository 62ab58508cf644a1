"""Run bookkeeping: typed configs read from TOML/JSON, and the SQLite results store."""

from sltlab.runs.config import check_range, from_dict, load_toml
from sltlab.runs.store import RunRecord, Store, make_run_id

__all__ = ["RunRecord", "Store", "check_range", "from_dict", "load_toml", "make_run_id"]
