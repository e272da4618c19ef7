"""The working-day calendar (settlement/data/calendar.json) against the ``holidays`` package.

Published years (those the package has the State Council's notice for) must give the same
working days, day by day, including the bridging days and the make-up working days (调休).
A year the package has no notice for must be marked provisional, and must then agree with the
package's reading of the statutory rule: the statutory days, and for each that falls on a weekend
a weekday in lieu (补假) right after. When the package gains the notice for a provisional year,
the first check fails until the file holds the published schedule.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import holidays
import pytest
from holidays.countries.china import ChinaStaticHolidays

from settlement.transfer import DEFAULT_CALENDAR, is_working_day, parse_calendar

RAW = json.loads(DEFAULT_CALENDAR.read_text(encoding="utf-8"))
CAL = parse_calendar(RAW)
# The package holds each notice as that year's swapped days; it has them from 2001.
PUBLISHED = range(2001, max(ChinaStaticHolidays.special_public_holidays) + 1)


def days_of(year: int):
    day = date(year, 1, 1)
    while day.year == year:
        yield day
        day += timedelta(days=1)


def disagreements(year: int) -> list[str]:
    # Neighbouring years too: a notice may move a working day across New Year.
    package = holidays.China(years=range(year - 1, year + 2))
    return [f"{day} ({day:%a}): a working day in the calendar: {ours}; "
            f"in the holidays package: {not ours} ({package.get(day) or 'no holiday'})"
            for day in days_of(year)
            if (ours := is_working_day(day, CAL)) != package.is_working_day(day)]


@pytest.mark.parametrize("year", sorted(RAW["years"]))
def test_every_year_says_whether_it_is_provisional(year):
    assert isinstance(RAW["years"][year].get("provisional"), bool), \
        f"calendar {year}: 'provisional' must be true or false"


@pytest.mark.parametrize("year", [y for y in sorted(RAW["years"]) if int(y) in PUBLISHED])
def test_published_years_agree_with_the_notice(year):
    assert RAW["years"][year]["provisional"] is False, \
        f"the {year} notice is published: replace the provisional entry and mark it final"
    assert disagreements(int(year)) == []


@pytest.mark.parametrize("year", [y for y in sorted(RAW["years"]) if int(y) not in PUBLISHED])
def test_unpublished_years_are_provisional_with_days_in_lieu(year):
    assert RAW["years"][year]["provisional"] is True, \
        f"no published notice for {year} is known: mark it provisional"
    assert disagreements(int(year)) == []


def test_the_years_checked_include_a_published_and_a_provisional_one():
    years = {int(y) for y in RAW["years"]}
    assert years & set(PUBLISHED) and years - set(PUBLISHED)


def test_2027_weekend_holidays_are_made_up_on_the_next_weekdays():
    # Spring Festival 6-7 Feb, Labour Day 1-2 May, National Day 2-3 Oct fall on weekends.
    for day in ("2027-02-09", "2027-02-10", "2027-05-03", "2027-05-04", "2027-10-04",
                "2027-10-05"):
        assert not is_working_day(date.fromisoformat(day), CAL), day
    for day in ("2027-02-11", "2027-05-05", "2027-10-06"):
        assert is_working_day(date.fromisoformat(day), CAL), day
