"""Health checks: checkers (one module each), the pure per-real-server state machine (state.py)
and the asyncio shell that schedules every check on the daemon's loop (runner.py)."""
