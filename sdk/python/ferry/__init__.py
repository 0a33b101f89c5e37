"""Ferry's Python SDK: the Rust SDK (crates/ferry-client) through its UniFFI bindings.

Everything is in the generated module `ferry.ferry` (sdk/gen-bindings.sh writes it; do
not edit it) and re-exported here: `connect`, `register`, `Config`, `Client`, `Event`,
`FerryError` … See docs/sdk.md and examples/python_bot.py.
"""

import atexit as _atexit

from .ferry import *  # noqa: F401,F403
from .ferry import shutdown as _shutdown

# The SDK's threads call into Python (async completions, listeners). At exit its runtime
# is stopped first, while the interpreter is whole: a thread that called in while the
# interpreter is being torn down would abort the process.
_atexit.register(_shutdown)
