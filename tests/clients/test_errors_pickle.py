"""Client errors cross process boundaries (multiprocessing, concurrent.futures)."""

from __future__ import annotations

import pickle

import pytest

from chimney_client import errors
from chimney_client.errors import ERRORS_BY_CODE, NdisStatusError, RpcError


@pytest.mark.parametrize("cls", [RpcError, *ERRORS_BY_CODE.values()])
def test_rpc_errors_pickle_with_code_and_message(cls: type[RpcError]) -> None:
    err = cls(cls.code, f"{cls.symbol}: something about conn 17")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.wire_code, back.message, str(back)) == (err.wire_code, err.message, str(err))


def test_an_ndis_status_error_keeps_what_it_parsed() -> None:
    err = NdisStatusError(5, "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C) acknowledged 3")
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.status_value, back.acknowledged) == (
        "NDIS_STATUS_REQUEST_ABORTED",
        0xC023000C,
        3,
    )


@pytest.mark.parametrize(
    "cls",
    [
        errors.ChimneyError,
        errors.ConnectionLost,
        errors.CallTimeout,
        errors.ProtocolError,
        errors.AddressError,
    ],
)
def test_the_other_errors_pickle(cls: type[Exception]) -> None:
    back = pickle.loads(pickle.dumps(cls("what happened")))
    assert type(back) is cls and str(back) == "what happened"
