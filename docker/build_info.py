"""Print the image's build info as JSON (run inside the image build; see docker/Dockerfile).

    python docker/build_info.py <git commit> <build date> <image name> <torch spec> <lock file>
"""

import hashlib
import json
import sys

import torch


def main(argv: list[str]) -> None:
    """Write the build record to stdout (the Dockerfile redirects it to /etc/anet-build.json)."""
    commit, date, name, torch_spec, lock = argv
    with open(lock, "rb") as f:
        lock_sha256 = hashlib.sha256(f.read()).hexdigest()
    info = {"git_commit": commit, "build_date": date, "image_name": name, "torch_spec": torch_spec,
            "torch": torch.__version__, "lock": lock, "lock_sha256": lock_sha256}
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
