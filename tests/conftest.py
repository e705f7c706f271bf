"""Shared fixtures. ``tgi_stand_in`` starts TGI-protocol stand-ins (see
``tests/stand_ins/tgi_server.py``) and stops them at teardown:

    def test_x(tgi_stand_in):
        server = tgi_stand_in(lambda request: "Yes", faults={0: OVERLOADED})
        ... server.url ... server.requests ...
"""

from __future__ import annotations

import pytest

from tests.stand_ins.tgi_server import TGIStandIn


@pytest.fixture
def tgi_stand_in():
    started: list[TGIStandIn] = []

    def start(responder=None, **options) -> TGIStandIn:
        server = TGIStandIn(responder, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
