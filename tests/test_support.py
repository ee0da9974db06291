"""The test helpers themselves: the one wait, and the skip notes printed once per run."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from support.wait import wait_until, wait_until_async

pytest_plugins = ["pytester"]


def test_wait_until_returns_the_first_truthy_value() -> None:
    seen = iter([0, [], "", [1, 2]])
    assert wait_until(lambda: next(seen), what="a list") == [1, 2]


def test_wait_until_with_until_returns_the_value_it_accepts() -> None:
    seen = iter([[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]])
    assert wait_until(lambda: next(seen), until=lambda rows: len(rows) >= 3, what="3 rows") == [1, 2, 3]


def test_wait_until_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as e:
        wait_until(lambda: [7], until=lambda rows: len(rows) == 2, timeout=0, what="two rows")
    assert str(e.value) == "timed out after 0 s waiting for two rows; last saw [7]"


def test_wait_until_lets_an_exception_from_the_check_through_at_once() -> None:
    def check() -> bool:
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="the process died"):
        wait_until(check, timeout=3600, what="a process")


def test_wait_until_async_awaits_a_coroutine_check_and_fails_like_its_twin() -> None:
    seen = iter([(0, 1), (0, 2), (0, 3)])

    async def bounds() -> tuple[int, int]:
        await asyncio.sleep(0)
        return next(seen)

    async def main() -> tuple[tuple[int, int], str]:
        found = await wait_until_async(bounds, until=lambda b: b[1] >= 2, what="seq 2")
        with pytest.raises(AssertionError) as e:
            await wait_until_async(lambda: None, timeout=0, what="nothing")
        return found, str(e.value)

    assert asyncio.run(main()) == ((0, 2), "timed out after 0 s waiting for nothing; last saw None")


def test_a_kind_of_skip_is_explained_once_at_the_end_of_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makeconftest('pytest_plugins = ["support.skips"]')
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            """
            import pytest
            from support.skips import explained_skip

            NO_TOASTER = explained_skip("no toaster", lambda: "Plug in a toaster: `apt-get install toaster`.")
            needs_toaster = pytest.mark.skipif(True, reason=NO_TOASTER)


            @needs_toaster
            def test_one():
                pass


            @needs_toaster
            def test_two():
                pass


            def test_other():
                pytest.skip("another reason")
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*- 2 skipped: no toaster -*",
            "Plug in a toaster: `apt-get install toaster`.",
            "*short test summary info*",
            "SKIPPED [[]1[]] test_inner.py:8: no toaster (see the note at the end of the run)",
            "SKIPPED [[]1[]] test_inner.py:13: no toaster (see the note at the end of the run)",
            "SKIPPED [[]1[]] test_inner.py:19: another reason",
        ]
    )
    assert result.stdout.str().count("Plug in a toaster") == 1


def test_no_note_when_nothing_skipped_for_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["support.skips"]')
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            """
            from support.skips import explained_skip

            NO_TOASTER = explained_skip("no kettle", lambda: "Plug in a kettle.")


            def test_it():
                pass
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1)
    assert "kettle" not in result.stdout.str()
