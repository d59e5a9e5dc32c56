"""``python -m retrieval.rerank``: the shortlist's spatial verification CLI, kept at its old name.

The verification itself (dense RootSIFT mutual NN, lifting, PnP per pair) is ``pose.verify_shortlist``;
options and output are those of ``python -m pose.verify_shortlist``.
"""

from __future__ import annotations

import sys

from pose.verify_shortlist import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m retrieval.rerank"))
