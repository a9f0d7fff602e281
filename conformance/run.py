"""Judge a WebSocket echo endpoint with the Autobahn|Testsuite fuzzing-client cases.

Started by `conformance/run`, with the interpreter of the virtual environment that holds the pinned `kosoku`
package. kosoku executes Autobahn's own case files and verdict code (case.py) under Python 3, with a Rust
driver for the wire; this file decides which cases run, runs them one connection at a time under a watchdog,
turns the two Autobahn verdicts of each case into pass or fail, writes the report and prints the summary.

Output: one `FAIL ...` line per failing case on stdout, then `N passed, M failed` as the last line; progress
goes to stderr. Exit status: 0 every selected case passed, 1 some case failed, 2 the cases could not be run.
kosoku is imported only where cases are listed or run, so `--help` works before it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2

# A case passes when both of its Autobahn verdicts are in these sets (Autobahn's "Pass", "Non-Strict" and
# "Informational" columns). Every other verdict fails: FAILED, UNIMPLEMENTED and ERROR for the exchange;
# FAILED, UNCLEAN, WRONG CODE and FAILED BY CLIENT for the close. A push server must send the right close code
# and drop its own TCP connections, so WRONG CODE and FAILED BY CLIENT are failures here even though Autobahn's
# HTML report colours them amber/pale green.
PASSING_BEHAVIOR = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASSING_CLOSE = frozenset({"OK", "INFORMATIONAL"})

# Outcomes of this runner's own, for cases that got no verdict. Both fail.
TIMED_OUT = "TIMEOUT"
NOT_RUN = "NOT RUN"

# Before the first case, one connection (the short case 1.1.1, not counted) must get through the opening
# handshake within this limit, so that a dead endpoint fails in seconds instead of case after case.
PREFLIGHT_CASE = "1.1.1"
PREFLIGHT_LIMIT_S = 10.0
# A server that takes connections but stalls every case would otherwise run into --timeout.
MAX_TIMEOUTS_IN_A_ROW = 3


class CannotRun(Exception):
    """The cases cannot be run at all: bad arguments, an unusable endpoint, kosoku missing."""


@dataclass
class Outcome:
    """What became of one selected case."""

    case_id: str
    behavior: str  # Autobahn's `behavior` verdict, or TIMED_OUT / NOT_RUN
    close: str | None  # Autobahn's `behaviorClose` verdict; None when the case gave no verdict
    peer_close_code: int | None
    explanation: str  # why it failed (empty when it passed)
    result: Any = None  # kosoku's CaseResult, for the Autobahn-format report

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING_BEHAVIOR and self.close in PASSING_CLOSE

    def fail_line(self) -> str:
        verdicts = f"behavior={self.behavior}"
        if self.close is not None:
            verdicts += f" close={self.close}"
        if self.peer_close_code is not None:
            verdicts += f" (peer sent close {self.peer_close_code})"
        return f"FAIL {self.case_id}: {verdicts}: {self.explanation}"

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "behavior": self.behavior,
            "behaviorClose": self.close,
            "remoteCloseCode": self.peer_close_code,
            "explanation": self.explanation,
        }


def outcome_of(result: Any) -> Outcome:
    behavior, close = result.behavior.value, result.behavior_close.value
    if behavior == "UNIMPLEMENTED":
        why = "the server did not negotiate permessage-deflate"
    elif behavior not in PASSING_BEHAVIOR:
        why = result.result
    elif close not in PASSING_CLOSE:
        why = result.result_close
    else:
        why = ""
    return Outcome(result.case_id, behavior, close, result.remote_close_code, why, result)


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="conformance/run",
        description="Run the Autobahn|Testsuite fuzzing-client cases (RFC 6455) against a WebSocket echo "
        "endpoint, print one line per failing case, then 'N passed, M failed'. Exit status: 0 all passed, "
        "1 some case failed, 2 the cases could not be run. See README.md, section Tests.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        help="the echo endpoint, e.g. ws://127.0.0.1:9001/echo (required unless --list)",
    )
    for flag, what in (("--include", "run only these cases (default: all, 1.* to 13.*)"),
                       ("--exclude", "skip these cases, e.g. '12.*,13.*'")):
        parser.add_argument(
            flag,
            action="append",
            default=[],
            metavar="GLOBS",
            help=f"{what}: comma-separated case ids or globs; may be repeated",
        )
    parser.add_argument(
        "--case-timeout",
        type=positive_seconds,
        default=150.0,
        metavar="S",
        help="seconds one case may take before it fails as TIMEOUT (default 150: some 9.* cases wait up to "
        "100 s for an echo by design)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=900.0,
        metavar="S",
        help="seconds for the whole run; cases not started by then fail as NOT RUN (default 900)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write Autobahn's report (index.html, index.json, one file per case with its wire log), "
        "verdicts.json and summary.txt into DIR (default: no report)",
    )
    parser.add_argument("--list", action="store_true", help="print the selected case ids and exit")
    args = parser.parse_args(argv)
    if args.url is None and not args.list:
        parser.error("the endpoint URL is required (or --list)")
    return args


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def globs_of(values: list[str]) -> list[str]:
    return [glob.strip() for value in values for glob in value.split(",") if glob.strip()]


def select(case_ids: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """The case ids, in suite order, that match some include glob (all when none) and no exclude glob."""

    def matches(case_id: str, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(case_id, glob) for glob in globs)

    for glob in include + exclude:
        if not any(fnmatch.fnmatchcase(case_id, glob) for case_id in case_ids):
            print(f"conformance/run: warning: {glob!r} matches no case", file=sys.stderr)
    return [c for c in case_ids if (not include or matches(c, include)) and not matches(c, exclude)]


def check_endpoint(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "wss":
        # kosoku 0.1.0 rejects the scheme ("invalid url scheme "wss": expected ws or http") and its Rust driver
        # is built without TLS ("TLS support not compiled in").
        raise CannotRun(f"{url}: kosoku has no TLS client; run the cases against a ws:// endpoint")
    if parts.scheme != "ws":
        raise CannotRun(f"{url}: not a ws:// URL")
    try:
        parts.port
    except ValueError as err:
        raise CannotRun(f"{url}: {err}") from None
    if not parts.hostname:
        raise CannotRun(f"{url}: no host")


# --- running ----------------------------------------------------------------------------------------------


def mend_text_hashing(cases: dict[str, Any]) -> None:
    """Give the 12.* and 13.* cases their messages as bytes, as Autobahn's Python 2 code expects.

    kosoku 0.1.0 hands a case's onMessage a `str` for text messages, and for binary messages that arrived
    uncompressed (one code point per octet). The permessage-deflate cases (case12_x_x.py) hash the message first
    (`hashlib.sha1().update(msg)`) and decode text only then, code written when a message was bytes: under
    Python 3 every case with text data (12.1.*, 12.4.*, all of 13.*) ends in ERROR "Strings must be encoded
    before hashing" against any server, and a binary echo sent uncompressed (too small, or no smaller
    compressed: RFC 7692 lets a server send any message plain) would too. Encoding the str back into the octets
    that arrived (UTF-8 for text, one octet per code point for binary) leaves the case's own checks unchanged:
    message type, length and SHA-1 of the echo against what was sent, so a wrong echo still fails.
    """
    for case_id, cls in cases.items():
        if case_id.split(".")[0] not in ("12", "13") or getattr(cls, "_herald_mended", False):
            continue
        original = cls.onMessage

        def on_message(self, msg, binary, _original=original):
            if isinstance(msg, str):
                msg = msg.encode("latin-1" if binary else "utf-8")
            return _original(self, msg, binary)

        cls.onMessage = on_message
        cls._herald_mended = True



async def run_case(url: str, case_id: str, limit_s: float) -> Outcome:
    """One case on its own connection, failed as TIMEOUT when it gives no verdict within `limit_s`."""
    from kosoku import FailureError, run_fuzzingclient

    try:
        results = await asyncio.wait_for(run_fuzzingclient(url, [case_id]), limit_s)
    except FailureError as failure:  # kosoku raises when a case fails; the results ride along
        results = failure.results
    except asyncio.TimeoutError:
        return Outcome(case_id, TIMED_OUT, None, None, f"no verdict within {limit_s:g} s")
    except Exception as err:  # kosoku could not even start the case: record it, go on with the others
        return Outcome(case_id, "ERROR", None, None, f"kosoku: {type(err).__name__}: {err}")
    mine = [r for r in results if r.case_id == case_id]
    if len(mine) != 1:
        return Outcome(case_id, "ERROR", None, None, f"kosoku returned {len(mine)} results for this case")
    return outcome_of(mine[0])


async def preflight(url: str) -> str:
    """Connect once; return the server's name (its Server header) or raise CannotRun saying why not."""
    outcome = await run_case(url, PREFLIGHT_CASE, PREFLIGHT_LIMIT_S)
    if outcome.behavior == TIMED_OUT:
        raise CannotRun(f"{url}: no WebSocket connection within {PREFLIGHT_LIMIT_S:g} s (handshake stalled?)")
    if outcome.result is None or outcome.behavior == "ERROR":
        # e.g. "connect: Connection refused (os error 111)", "handshake: expected HTTP 101, got 404 Not Found"
        raise CannotRun(f"{url}: {outcome.explanation}")
    return outcome.result.agent


async def run_all(url: str, case_ids: list[str], case_limit_s: float, run_limit_s: float):
    """Run the cases in order; return their outcomes and, if the run was cut short, why."""
    deadline = time.monotonic() + run_limit_s
    outcomes: list[Outcome] = []
    stopped: str | None = None
    timeouts_in_a_row = 0
    group_started = time.monotonic()
    for index, case_id in enumerate(case_ids):
        if stopped is None and time.monotonic() > deadline:
            stopped = f"the run reached --timeout {run_limit_s:g} s"
        if stopped is not None:
            outcome = Outcome(case_id, NOT_RUN, None, None, "the run stopped early (see the note)")
        else:
            limit_s = min(case_limit_s, max(deadline - time.monotonic(), 1.0))
            outcome = await run_case(url, case_id, limit_s)
            if outcome.behavior == TIMED_OUT and limit_s < case_limit_s:
                outcome.explanation = f"cut off when the run reached --timeout {run_limit_s:g} s"
            timeouts_in_a_row = timeouts_in_a_row + 1 if outcome.behavior == TIMED_OUT else 0
            if timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
                stopped = f"{timeouts_in_a_row} cases in a row timed out"
            elif outcome.behavior in (TIMED_OUT, "ERROR"):
                # No verdict: is the endpoint still there? If not, say so once instead of failing every case.
                try:
                    await preflight(url)
                except CannotRun as err:
                    stopped = f"the endpoint stopped answering after {case_id} ({err})"
        outcomes.append(outcome)

        group = case_id.split(".")[0]
        if index + 1 == len(case_ids) or case_ids[index + 1].split(".")[0] != group:
            in_group = [o for o in outcomes if o.case_id.split(".")[0] == group]
            passed = sum(o.passed for o in in_group)
            print(
                f"  {group}.*: {passed}/{len(in_group)} passed in {time.monotonic() - group_started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            group_started = time.monotonic()
    return outcomes, stopped


# --- report -----------------------------------------------------------------------------------------------


def write_report(directory: Path, outcomes: list[Outcome], summary: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    results = [o.result for o in outcomes if o.result is not None]
    try:
        from kosoku._report import write_reports  # Autobahn's format: index.html, index.json, per-case files

        write_reports(results, str(directory))
    except Exception as err:  # the HTML is for reading; verdicts.json below is the record
        print(f"conformance/run: warning: no Autobahn HTML report: {err}", file=sys.stderr)
    verdicts = {o.case_id: o.as_json() for o in outcomes}
    (directory / "verdicts.json").write_text(json.dumps(verdicts, indent=1) + "\n")
    (directory / "summary.txt").write_text("\n".join(summary) + "\n")


def summary_lines(outcomes: list[Outcome], stopped: str | None, report: Path | None, elapsed_s: float):
    failed = [o for o in outcomes if not o.passed]
    lines = [o.fail_line() for o in failed]
    unimplemented = sum(o.behavior == "UNIMPLEMENTED" for o in failed)
    if unimplemented:
        lines.append(
            f"note: {unimplemented} permessage-deflate cases are UNIMPLEMENTED; --exclude '12.*,13.*' skips them"
        )
    if stopped:
        lines.append(f"note: stopped early: {stopped}")
    if report is not None:
        lines.append(f"report: {report / 'index.html'} ({elapsed_s:.1f} s)")
    elif failed:
        lines.append(f"({elapsed_s:.1f} s; --report DIR writes each case's details and wire log)")
    lines.append(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return lines


# --- main -------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    if not args.list:
        check_endpoint(args.url)
    try:
        from importlib.metadata import version

        from kosoku.cases import CASES
    except ImportError as err:
        raise CannotRun(f"kosoku is not importable ({err}); start this through conformance/run") from None

    mend_text_hashing(CASES)
    case_ids = select(list(CASES), globs_of(args.include), globs_of(args.exclude))
    if not case_ids:
        raise CannotRun("no case matches --include/--exclude")
    if args.list:
        print("\n".join(case_ids))
        return EXIT_PASSED

    server = await preflight(args.url)
    print(
        f"Autobahn|Testsuite cases (kosoku {version('kosoku')}): {len(case_ids)} against {args.url}"
        + (f", Server: {server}" if server and server != urllib.parse.urlsplit(args.url).netloc else ""),
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    outcomes, stopped = await run_all(args.url, case_ids, args.case_timeout, args.timeout)
    summary = summary_lines(outcomes, stopped, args.report, time.monotonic() - started)
    if args.report is not None:
        write_report(args.report, outcomes, summary)
    print("\n".join(summary), flush=True)
    return EXIT_PASSED if all(o.passed for o in outcomes) else EXIT_FAILED


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except CannotRun as err:
        print(f"conformance/run: cannot run the cases: {err}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("conformance/run: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Leave without interpreter finalisation: kosoku 0.1.0's Rust side can still be winding down a connection
    # then, and the process aborts (SIGABRT, status 134) in about a third of runs that end right after a case.
    # Everything is written and closed by now; only the standard streams need flushing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
