#!/usr/bin/env python3
"""Source tree for bench/engine: ~200k small text files plus one 50 MiB file.

    engine_tree.py OUT_DIR

Creates OUT_DIR/src/ (deterministic, seeded) and OUT_DIR/expected.json with what a reader of
the image must find: entry count, regular file count and bytes, and the wrapping 64-bit sum of
each file's Adler-32 (engine_bench computes the same).
"""

import json
import os
import random
import sys
import zlib

TOP, SUB, FILES = 20, 100, 100  # 20 x 100 directories x 100 files = 200,000 files
MAX_SMALL = 4096
BIG = 50 << 20
DEEP = 16
LOOKUP_SIZE = 300 << 10  # two full 128 KiB blocks plus a tail in a fragment
MASK = (1 << 64) - 1


def main():
    out = sys.argv[1]
    src = os.path.join(out, "src")
    rng = random.Random(20240611)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(4000)]
    lines = []
    size = 0
    while size < (8 << 20):
        line = " ".join(rng.choices(words, k=rng.randint(4, 14)))
        lines.append(line)
        size += len(line) + 1
    corpus = ("\n".join(lines) + "\n").encode()

    def text(n):
        start = rng.randrange(0, len(corpus) - n)
        return corpus[start:start + n]

    entries = files = total = checksum = 0

    def write(path, data):
        nonlocal files, total, checksum
        with open(path, "wb") as f:
            f.write(data)
        files += 1
        total += len(data)
        checksum = (checksum + zlib.adler32(data)) & MASK

    os.makedirs(src)
    for t in range(TOP):
        top = os.path.join(src, f"d{t:02}")
        os.mkdir(top)
        entries += 1
        for s in range(SUB):
            sub = os.path.join(top, f"s{s:03}")
            os.mkdir(sub)
            entries += 1
            for i in range(FILES):
                write(os.path.join(sub, f"f{i:02}.txt"), text(rng.randint(0, MAX_SMALL)))
                entries += 1

    big = b"".join(text(1 << 20) for _ in range(BIG >> 20))
    write(os.path.join(src, "big.bin"), big)
    entries += 1

    deep = os.path.join(src, "deep")
    parts = ["deep"] + [f"l{i:02}" for i in range(1, DEEP + 1)]
    os.makedirs(os.path.join(src, *parts))
    entries += len(parts)
    lookup = "/".join(parts + ["target.txt"])
    data = text(LOOKUP_SIZE)
    write(os.path.join(src, lookup), data)
    entries += 1

    expected = {
        "entries": entries,
        "files": files,
        "file_bytes": total,
        "checksum": checksum,
        "lookup": {"path": lookup, "size": len(data), "checksum": zlib.adler32(data)},
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
