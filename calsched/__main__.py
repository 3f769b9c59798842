"""``python -m calsched``: the ``calsched`` command, for when the script is not on PATH.

``calsched demo`` starts its daemon this way, with the same interpreter that runs it.
"""

from __future__ import annotations

from calsched.cli import main

if __name__ == "__main__":
    main()
