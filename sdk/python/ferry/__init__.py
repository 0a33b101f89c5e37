"""Ferry's Python SDK: the Rust SDK (crates/ferry-client) through its UniFFI bindings.

Everything is in the generated module `ferry.ferry` (sdk/gen-bindings.sh writes it; do
not edit it) and re-exported here: `connect`, `register`, `Config`, `Client`, `Event`,
`FerryError` … See docs/sdk.md and examples/python_bot.py.
"""

from .ferry import *  # noqa: F401,F403
