"""Training tokens/s of every back-end beside the AR baseline and transformers' GPT2LMHeadModel: a shortcut for
`textdiff bench throughput` (the code lives in textdiff/bench/throughput.py).

    python benchmarks/throughput.py                       # 6 x 512 x 8, vocab 8192, batch 32 x 128
    python benchmarks/throughput.py --steps 3 --rounds 2  # quicker
"""

import sys

from textdiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "throughput", *sys.argv[1:]]))
