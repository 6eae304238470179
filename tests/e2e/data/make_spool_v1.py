#!/usr/bin/python3
"""
tests/e2e/data/make_spool_v1.py - Makes spool-v1.tar.gz, the format-1
spool that test_spool_upgrade.py upgrades: run it with RELAYD_BIN and
RELAYCTL_BIN set to a relayd built at bb1fcad (the last release that
writes index format 1), from tests/e2e:

  git worktree add --detach /tmp/relayd-v1 bb1fcad
  make -C /tmp/relayd-v1 all
  cd tests/e2e && RELAYD_BIN=/tmp/relayd-v1/build/relayd \\
    RELAYCTL_BIN=/tmp/relayd-v1/build/relayctl \\
    /usr/bin/python3 data/make_spool_v1.py data/spool-v1.tar.gz

What it holds (written to spool-v1.json beside the tarball, which the test
compares with): two messages accepted in hold mode and held with
`relayctl hold` (HOLD, three and two recipients, DSN parameters on one), then, delivering to a smarthost that
answers 451 to some recipients, two messages with a recipient sent and
others deferred (attempts 1, a next attempt an hour on).
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import Relayd, wait_until  # noqa: E402
from conftest_upstream import make_message, queue_list, submit  # noqa: E402
from upstream import Upstream, make_test_ca, new_upstream_dir  # noqa: E402

SENDER = "sender@client.test"
LATER = "451 4.7.1 greylisted, try again later"


def main(out):
    work = tempfile.mkdtemp(prefix="spool-v1-")
    os.mkdir(os.path.join(work, "ca"))
    ca = make_test_ca(os.path.join(work, "ca"))
    up = Upstream(new_upstream_dir(), ca, tls="none", behaviour={
        "rcpt": {"later1@dest.test": LATER, "later2@dest.test": LATER,
                 "later3@dest.test": LATER}}).start()
    r = Relayd(work, log_level="info")
    try:
        r.start()
        held = []
        content, _ = make_message("held one", to="h1@dest.test")
        held.append(submit(r, SENDER, ["h1@dest.test", "h2@dest.test",
                                       "h3@dest.test"], content))
        content, _ = make_message("held two", to="h4@dest.test")
        held.append(submit(r, SENDER, ["h4@dest.test", "h5@dest.test"],
                           content,
                           mail_options=["RET=HDRS", "ENVID=QQ+2B314"],
                           rcpt_options={"h4@dest.test": [
                               "NOTIFY=SUCCESS,FAILURE",
                               "ORCPT=rfc822;h4@dest.test"]}))
        # On hold by the operator, so they stay in the queue (HOLD)
        # once delivery is on.
        for qid in held:
            r.relayctl("hold", qid)
        r.stop()

        r.conf.update({"delivery": "smarthost", "smarthost": up.smarthost,
                       "smarthost_tls": "none", "retry_min": "1h",
                       "retry_max": "2h", "delay_warning_after": "0"})
        r.write_conf()
        r.start()
        deferred = []
        content, _ = make_message("deferred one", to="now1@dest.test")
        deferred.append(submit(r, SENDER, ["now1@dest.test",
                                           "later1@dest.test"], content))
        content, _ = make_message("deferred two", to="later2@dest.test")
        deferred.append(submit(r, "", ["later2@dest.test", "now2@dest.test",
                                       "later3@dest.test"], content))

        def settled():
            for m in queue_list(r):
                if m["id"] in deferred and any(
                        x["state"] == "pending" for x in m["recipients"]):
                    return False
            return True
        wait_until(settled, timeout=30, what="the attempts to be recorded")
        listing = queue_list(r)
        r.stop()
        spool = r.spool
        with tarfile.open(out, "w:gz") as t:
            for sub in ("index", "msg"):
                t.add(os.path.join(spool, sub), arcname=sub)
        with open(os.path.splitext(os.path.splitext(out)[0])[0] + ".json",
                  "w") as f:
            json.dump({"held": held, "deferred": deferred,
                       "list": listing}, f, indent=1, sort_keys=True)
            f.write("\n")
    finally:
        if r.proc and r.proc.poll() is None:
            r.stop()
        up.stop()
        subprocess.run(["rm", "-rf", work, up.workdir], check=False)


if __name__ == "__main__":
    main(sys.argv[1])
