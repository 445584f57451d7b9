"""What a `--ray-address auto` example may answer on a machine whose clusters we do not own."""
import re

# Ray's driver prints worker deaths of an earlier in-process session ("(raylet) A worker
# died ...") whenever they arrive; a user's command is a fresh process and never sees them.
_RAY_NOTE = re.compile(r"^(\x1b\[\d+m)?\((raylet|pid=\d+)")


def joined_or_said_why(result) -> bool:
    """It planned on the cluster `auto` found, or said in one line why it could not: no
    cluster (naming `ray start --head`) or someone else's cluster lacking CPUs or GPUs."""
    if result.exit_code == 0:
        return True
    own = [line for line in result.output.strip().splitlines() if not _RAY_NOTE.match(line)]
    return (result.exit_code == 1 and len(own) == 1
            and re.search(r"ray start --head|CPU|GPU", own[0]) is not None)
