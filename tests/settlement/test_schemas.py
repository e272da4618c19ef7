"""The settlement models' own rules: money in an answer is a string of exactly two places, read
and written so; the reconcile body is read as ``date.fromisoformat`` always read it."""

from datetime import date
from decimal import Decimal

import pytest
from pydantic import ValidationError

from settlement.schemas import Amounts, ReconcileRequest

AMOUNTS = {"medfee_sumamt": "37.20", "fund_pay_sumamt": "27.90", "acct_pay": "-9.30"}


def test_money_is_written_with_two_places_whatever_the_decimal_holds():
    assert Amounts(medfee_sumamt=Decimal("37.2"), fund_pay_sumamt=Decimal("0"),
                   acct_pay=Decimal("-1.5")).model_dump_json() == (
        '{"medfee_sumamt":"37.20","fund_pay_sumamt":"0.00","acct_pay":"-1.50"}')
    assert Amounts.model_validate(AMOUNTS).model_dump(mode="json") == AMOUNTS


@pytest.mark.parametrize("value", [37.2, 37, "37.2", "37.200", "1e2", " 37.20", None])
def test_money_in_an_answer_is_never_a_number_nor_another_scale(value):
    with pytest.raises(ValidationError):
        Amounts.model_validate({**AMOUNTS, "acct_pay": value})


@pytest.mark.parametrize("body, day", [(b'{"date": "2024-03-15"}', date(2024, 3, 15)),
                                       (b'{"date": "20240315", "other": 1}', date(2024, 3, 15))])
def test_the_reconcile_body_reads_dates_as_before(body, day):
    assert ReconcileRequest.model_validate_json(body).date == day


@pytest.mark.parametrize("body", [b'{"date": 20240315}', b'{"date": "2024-02-30"}', b'{"day": "2024-03-15"}',
                                  b'["2024-03-15"]', b"", b"{"])
def test_a_reconcile_body_without_a_date_is_refused(body):
    with pytest.raises(ValidationError):
        ReconcileRequest.model_validate_json(body)
