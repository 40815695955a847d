"""The `connect --interactive` shell: one method call per line, tab completion of names."""

from __future__ import annotations

import asyncio
import readline
import sys
import time

from pykata.host.ctl.body import parse_command
from pykata.host.ctl.calls import call_and_print
from pykata.host.ctl.errors import CtlError, ExitCode
from pykata.host.ctl.methods import METHODS
from pykata.host.ctl.session import Session

PROMPT = "kata-agent-ctl> "
BUILTINS = {
    "help": "show this help",
    "list": "list the methods",
    "sleep": "sleep SECONDS",
    "quit": "leave the shell (also Ctrl-D)",
}
HELP = (
    "Type `Method [json://{...} | file:///path.json]`, e.g. `Check` or\n"
    '`StatsContainer json://{"container_id": "c1"}`. Tab completes names. Builtins:\n'
    + "\n".join(f"  {name:<6} {text}" for name, text in BUILTINS.items())
)


class Shell:
    """Runs each line's call on the caller's asyncio runner, where the connection lives."""

    def __init__(self, runner: asyncio.Runner, session: Session) -> None:
        self.runner = runner
        self.session = session
        self.names = sorted([*METHODS, *BUILTINS])

    def complete(self, text: str, state: int) -> str | None:
        # Only the first word is a name; after it comes the body, nothing to complete.
        if " " in readline.get_line_buffer().lstrip():
            return None
        matches = [name for name in self.names if name.startswith(text)]
        return matches[state] if state < len(matches) else None

    def loop(self) -> ExitCode:
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        while True:
            try:
                line = input(PROMPT).strip()
            except EOFError:
                print()
                return ExitCode.OK
            except KeyboardInterrupt:
                print()
                continue
            if not line:
                continue
            if line == "quit":
                return ExitCode.OK
            status = self.run_line(line)
            if status == ExitCode.CONNECTION:
                return status

    def run_line(self, line: str) -> ExitCode:
        word, _, rest = line.partition(" ")
        if word == "help":
            print(HELP)
        elif word == "list":
            print("\n".join(sorted(METHODS)))
        elif word == "sleep":
            try:
                time.sleep(float(rest))
            except ValueError:
                print("sleep: give a number of seconds", file=sys.stderr)
                return ExitCode.USAGE
        else:
            try:
                method, request = parse_command(line)
            except CtlError as exc:
                print(exc, file=sys.stderr)
                return exc.exit_code
            try:
                return self.runner.run(call_and_print(self.session, method, request))
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return ExitCode.RPC_ERROR
        return ExitCode.OK
