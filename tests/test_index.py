"""Tests of ocspd.index: the OpenSSL index.txt status source."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from ocspd.exceptions import SourceUnavailable
from ocspd.index import IndexFile
from ocspd.logs import KeyValueFormatter
from ocspd.status import CertStatus, Status

UTC = dt.UTC


def v(serial: str, cn: str = "leaf", expiry: str = "270101000000Z") -> str:
    return f"V\t{expiry}\t\t{serial}\tunknown\t/CN={cn}"


def e(serial: str, cn: str = "leaf", expiry: str = "240101000000Z") -> str:
    return f"E\t{expiry}\t\t{serial}\tunknown\t/CN={cn}"


def r(serial: str, revocation: str = "260102030405Z,keyCompromise", cn: str = "leaf") -> str:
    return f"R\t270101000000Z\t{revocation}\t{serial}\tunknown\t/CN={cn}"


def write(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")


def replace_atomically(path: Path, *lines: str) -> None:
    """What `openssl ca` does: write index.txt.new, then rename it over index.txt."""
    new = path.with_name(path.name + ".new")
    write(new, *lines)
    os.replace(new, path)


def loaded(path: Path, *lines: str) -> IndexFile:
    write(path, *lines)
    index = IndexFile(path)
    index.load()
    return index


async def async_wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def test_parses_valid_revoked_and_expired_lines(tmp_path: Path) -> None:
    index = loaded(tmp_path / "index.txt", v("1000"), r("1001"), e("1002"))
    assert len(index) == 3
    good = index.lookup(0x1000)
    assert good is not None and good.status is Status.GOOD
    assert good.revoked_at is None and good.reason is None
    revoked = index.lookup(0x1001)
    assert revoked is not None and revoked.status is Status.REVOKED
    expired = index.lookup(0x1002)
    assert expired is not None and expired.status is Status.GOOD


def test_revocation_time_and_reason(tmp_path: Path) -> None:
    index = loaded(tmp_path / "index.txt", r("1001", "260102030405Z,keyCompromise"))
    assert index.lookup(0x1001) == CertStatus(
        Status.REVOKED,
        revoked_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        reason=x509.ReasonFlags.key_compromise,
        version=1,
    )


@pytest.mark.parametrize(
    ("revocation", "reason"),
    [
        ("260102030405Z", None),
        ("260102030405Z,unspecified", None),
        ("260102030405Z,keyCompromise", x509.ReasonFlags.key_compromise),
        ("260102030405Z,CACompromise", x509.ReasonFlags.ca_compromise),
        ("260102030405Z,affiliationChanged", x509.ReasonFlags.affiliation_changed),
        ("260102030405Z,superseded", x509.ReasonFlags.superseded),
        ("260102030405Z,cessationOfOperation", x509.ReasonFlags.cessation_of_operation),
        ("260102030405Z,certificateHold", x509.ReasonFlags.certificate_hold),
        (
            "260102030405Z,holdInstruction,1.2.840.10040.2.2",
            x509.ReasonFlags.certificate_hold,
        ),
        ("260102030405Z,keyTime,260101000000Z", x509.ReasonFlags.key_compromise),
        ("260102030405Z,CAkeyTime,260101000000Z", x509.ReasonFlags.ca_compromise),
        ("260102030405Z,KEYCOMPROMISE", x509.ReasonFlags.key_compromise),  # any case
    ],
)
def test_revocation_reasons_map_to_reason_flags(
    tmp_path: Path, revocation: str, reason: x509.ReasonFlags | None
) -> None:
    index = loaded(tmp_path / "index.txt", r("10", revocation))
    status = index.lookup(0x10)
    assert status is not None and status.status is Status.REVOKED
    assert status.reason is reason
    assert status.revoked_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_utctime_and_generalizedtime_formats(tmp_path: Path) -> None:
    index = loaded(
        tmp_path / "index.txt",
        r("01", "490102030405Z"),  # UTCTime, YY < 50: 20YY
        r("02", "500102030405Z"),  # UTCTime, YY >= 50: 19YY
        r("03", "20510102030405Z,superseded"),  # GeneralizedTime
        v("04", expiry="20600101000000Z"),
    )
    times = {s: getattr(index.lookup(s), "revoked_at", None) for s in (1, 2, 3)}
    assert times == {
        1: dt.datetime(2049, 1, 2, 3, 4, 5, tzinfo=UTC),
        2: dt.datetime(1950, 1, 2, 3, 4, 5, tzinfo=UTC),
        3: dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    four = index.lookup(4)
    assert four is not None and four.status is Status.GOOD


def test_serials_in_any_case(tmp_path: Path) -> None:
    index = loaded(tmp_path / "index.txt", v("0abcdef0"), r("DEADBEEF"), v("CafeBabe"))
    assert {s for s in (0xABCDEF0, 0xDEADBEEF, 0xCAFEBABE) if index.lookup(s)} == {
        0xABCDEF0,
        0xDEADBEEF,
        0xCAFEBABE,
    }


def test_malformed_line_is_skipped_and_logged_with_line_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.txt"
    bad = [
        "V\t270101000000Z\t\tZZZZ\tunknown\t/CN=bad-serial",
        "X\t270101000000Z\t\t20\tunknown\t/CN=bad-flag",
        "R\t270101000000Z\tyesterday\t21\tunknown\t/CN=bad-time",
        "R\t270101000000Z\t260102030405Z,notAReason\t22\tunknown\t/CN=bad-reason",
        "R\t270101000000Z\t260102030405Z,removeFromCRL\t23\tunknown\t/CN=refused",
        "V\t27010100\t\t24\tunknown\t/CN=bad-expiry",
        "V\t270101000000Z\t\t25",  # cut short
    ]
    with caplog.at_level(logging.WARNING, logger="ocspd.index"):
        index = loaded(path, v("10"), *bad, "", r("11"))
    assert len(index) == 2 and index.lookup(0x10) and index.lookup(0x11)
    assert all(index.lookup(s) is None for s in range(0x20, 0x26))
    warnings = [KeyValueFormatter().format(rec) for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == len(bad)
    for lineno, message in enumerate(warnings, start=2):
        assert str(path) in message and f"line={lineno} " in message


@pytest.mark.parametrize(
    "revocation",
    [
        "260102030405Z,keyTime",  # the compromise time is missing
        "260102030405Z,keyTime,",
        "260102030405Z,CAkeyTime,1.2.840.10040.2.2",  # an OID where a time belongs
        "260102030405Z,holdInstruction",  # the OID is missing
        "260102030405Z,keyCompromise,260101000000Z",  # no argument for the plain names
        "260102030405Z,,260101000000Z",
    ],
)
def test_the_argument_of_a_reason_is_required_where_openssl_writes_one_and_refused_elsewhere(
    tmp_path: Path, revocation: str
) -> None:
    index = loaded(tmp_path / "index.txt", v("10"), r("11", revocation))
    assert index.lookup(0x10) is not None and index.lookup(0x11) is None


def test_malformed_line_hides_earlier_lines_of_its_serial(tmp_path: Path) -> None:
    index = loaded(
        tmp_path / "index.txt",
        v("30"),
        "R\t270101000000Z\tgarbage\t30\tunknown\t/CN=x",  # a broken revocation
    )
    assert index.lookup(0x30) is None  # unknown, never the older "good"


def test_last_duplicate_wins(tmp_path: Path) -> None:
    index = loaded(tmp_path / "index.txt", v("40"), r("40"), r("41"), v("41"))
    first = index.lookup(0x40)
    second = index.lookup(0x41)
    assert first is not None and first.status is Status.REVOKED
    assert second is not None and second.status is Status.GOOD
    assert len(index) == 2


def test_lookup_returns_none_for_unlisted_serial(tmp_path: Path) -> None:
    index = loaded(tmp_path / "index.txt", v("1000"))
    assert index.lookup(0x1001) is None
    assert index.lookup(0) is None


def test_first_load_returns_all_serials(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    write(path, v("1"), r("2"), e("3"))
    assert IndexFile(path).load() == {1, 2, 3}


def test_load_returns_exactly_the_revoked_serial(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"), v("2"), v("3"))
    replace_atomically(path, v("1"), r("2"), v("3"))
    assert index.load() == {2}


def test_load_returns_added_and_removed_serials(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"), v("2"))
    replace_atomically(path, v("1"), v("2"), v("3"))
    assert index.load() == {3}
    replace_atomically(path, v("1"), v("3"))
    assert index.load() == {2}
    assert index.lookup(2) is None


def test_load_returns_serials_whose_reason_changed(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, r("1", "260102030405Z,certificateHold"), r("2"))
    replace_atomically(path, r("1", "260102030405Z,keyCompromise"), r("2"))
    assert index.load() == {1}


def test_version_bumps_only_when_something_changed(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"), v("2"))
    assert index.version == 1
    replace_atomically(path, v("1"), v("2"))  # same content, new file
    assert index.load() == set()
    assert index.version == 1
    replace_atomically(path, v("1"), r("2"))
    assert index.load() == {2}
    assert index.version == 2
    one, two = index.lookup(1), index.lookup(2)
    assert one is not None and one.version == 1  # unchanged since load 1
    assert two is not None and two.version == 2


def test_unreadable_file_raises_source_unavailable_naming_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "index.txt"
    with pytest.raises(SourceUnavailable, match=str(path)):
        IndexFile(path).load()


def test_failed_reload_keeps_previous_data(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"))
    path.unlink()
    with pytest.raises(SourceUnavailable):
        index.load()
    assert index.lookup(1) is not None and len(index) == 1


def test_changed_on_disk_detects_atomic_rename_replacement(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"))
    assert not index.changed_on_disk()
    before = path.stat()
    replace_atomically(path, e("1", expiry="270101000000Z"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    assert path.stat().st_size == before.st_size
    assert index.changed_on_disk()  # the inode gives it away
    index.load()
    assert not index.changed_on_disk()


def test_changed_on_disk_detects_append_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"))
    with path.open("a") as f:
        f.write(v("2") + "\n")
    assert index.changed_on_disk()
    index.load()
    path.unlink()
    assert index.changed_on_disk()


def test_watch_calls_on_change_after_the_file_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"), v("2"))
    calls: list[tuple[set[int], int]] = []

    async def main() -> None:
        task = asyncio.create_task(index.watch(lambda s: calls.append((s, threading.get_ident())), interval=0.05))
        try:
            await asyncio.sleep(0)
            replace_atomically(path, v("1"), r("2"))
            assert await async_wait_until(lambda: bool(calls), timeout=1.0)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert calls == [({2}, threading.get_ident())]  # called on the loop's thread
    two = index.lookup(2)
    assert two is not None and two.status is Status.REVOKED


def test_watch_survives_the_file_vanishing_briefly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"), v("2"))
    calls: list[set[int]] = []

    def failed() -> bool:
        return any(rec.getMessage() == "index_reload_failed" for rec in caplog.records)

    async def main() -> None:
        task = asyncio.create_task(index.watch(calls.append, interval=0.05))
        try:
            path.unlink()
            assert await async_wait_until(failed)
            assert index.lookup(1) is not None  # previous data kept meanwhile
            assert not task.done()
            write(path, v("1"), r("2"))
            assert await async_wait_until(lambda: bool(calls))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with caplog.at_level(logging.WARNING, logger="ocspd.index"):
        asyncio.run(main())
    assert calls == [{2}]
    two = index.lookup(2)
    assert two is not None and two.status is Status.REVOKED


def test_watch_survives_a_failing_callback(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    index = loaded(path, v("1"))
    calls: list[set[int]] = []

    def on_change(serials: set[int]) -> None:
        calls.append(serials)
        if len(calls) == 1:
            raise RuntimeError("callback bug")

    bugs: list[None] = []

    async def main() -> None:
        task = asyncio.create_task(index.watch(on_change, interval=0.05, on_bug=lambda: bugs.append(None)))
        try:
            replace_atomically(path, r("1"))
            assert await async_wait_until(lambda: len(calls) == 1)
            replace_atomically(path, r("1"), v("2"))
            assert await async_wait_until(lambda: len(calls) == 2)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert calls == [{1}, {2}]
    assert len(bugs) == 1  # the failing callback, counted (app.py feeds ocspd_background_errors_total)


@pytest.mark.timeout(300)
def test_loads_a_million_line_file(tmp_path: Path) -> None:
    n = 1_000_000
    path = tmp_path / "index.txt"
    with path.open("w", encoding="ascii") as f:
        for i in range(n):
            serial = f"{0x10000000 + i:X}"
            if i % 10 == 0:
                sec = i % 60
                f.write(f"R\t270101000000Z\t2601020304{sec:02d}Z,keyCompromise\t{serial}\tunknown\t/CN=leaf{i}\n")
            else:
                f.write(f"V\t270101000000Z\t\t{serial}\tunknown\t/CN=leaf{i}\n")
    index = IndexFile(path)
    started = time.perf_counter()
    changed = index.load()
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = index.load()
    reload = time.perf_counter() - started
    print(f"\n1M-line index.txt: first load {first:.2f}s, unchanged reload {reload:.2f}s")
    assert len(index) == n and len(changed) == n and again == set()
    last = index.lookup(0x10000000 + n - 1)
    assert last is not None and last.status is Status.GOOD
    revoked = index.lookup(0x10000000 + 10)
    assert revoked is not None and revoked.status is Status.REVOKED
    assert revoked.revoked_at == dt.datetime(2026, 1, 2, 3, 4, 10, tzinfo=UTC)
