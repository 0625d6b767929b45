"""``python -m benchmarks.clipmdc``."""

from benchmarks.clipmdc.run import main

if __name__ == "__main__":
    main()
