"""`python -m deepseek_ocr ...`: the `deepseek-ocr` command (see `deepseek_ocr.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
