"""Drives Aider on a pty for tests/tests/aider.rs, as a user at its prompt would:
``drive_aider.py MESSAGES_JSON -- AIDER_ARGV...``. It sends each message of the JSON
list at Aider's input prompt in turn and ``/exit`` after the last; answers yes to
"Run shell command?" (``--yes-always`` answers no to it) and to "Add command output to
the chat?"; fails on any other question. A pty, not a pipe: Aider runs a command
through ``$SHELL -i -c COMMAND`` only when its stdin is a terminal (aider/run_cmd.py;
without one it runs ``/bin/sh -c``). Prints Aider's transcript and the seconds to its
first prompt; exits with Aider's exit status, 128+N if signal N killed it."""

import json
import sys
import time

import pexpect

# The first prompt waits for Aider's start (litellm's import is slow under emulation).
START_TIMEOUT = 1200
STEP_TIMEOUT = 600

RUN = r"Run shell commands?\? .*\]: "
ADD = r"Add command output to the chat\? .*\]: "
OTHER_QUESTION = r"\(Y\)es/\(N\)o.*\]: "
INPUT = r"\n[\w-]*> "


def say(text):
    print(f"\n[drive_aider] {text}", flush=True)


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: drive_aider.py MESSAGES_JSON -- AIDER_ARGV...")
    messages = json.loads(sys.argv[1])
    start = time.monotonic()
    child = pexpect.spawn(sys.argv[3], sys.argv[4:], encoding="utf-8", timeout=STEP_TIMEOUT)
    child.logfile_read = sys.stdout
    timeout = START_TIMEOUT
    prompts = 0
    while True:
        try:
            i = child.expect([RUN, ADD, OTHER_QUESTION, INPUT, pexpect.EOF], timeout=timeout)
        except pexpect.TIMEOUT:
            say(f"no prompt within {timeout} s")
            child.terminate(force=True)
            sys.exit(124)
        timeout = STEP_TIMEOUT
        if i in (0, 1):
            child.sendline("y")
        elif i == 2:
            say(f"unexpected question: {child.after!r}")
            child.terminate(force=True)
            sys.exit(3)
        elif i == 3:
            if prompts == 0:
                say(f"first prompt after {time.monotonic() - start:.1f} s")
            prompts += 1
            child.sendline(messages.pop(0) if messages else "/exit")
        else:
            break
    child.close()
    if child.signalstatus is not None:
        say(f"aider was killed by signal {child.signalstatus}")
        sys.exit(128 + child.signalstatus)
    say(f"aider exited {child.exitstatus} after {time.monotonic() - start:.1f} s")
    sys.exit(child.exitstatus)


if __name__ == "__main__":
    main()
