"""Kept for old notes: `normbench compare A B ...` does the same.

    python tests/compare_verdicts.py results /tmp/other/results
"""

import sys

from normbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
