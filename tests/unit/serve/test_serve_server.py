"""Starting the service: loopback addresses are told apart from others (which get a warning), exactly
one of --run / --model is taken, and a folder that is not a model bundle is refused before anything loads."""

import socket

import pytest

from ldm_ood.errors import BundleError, ConfigError
from ldm_ood.serve.server import bind, is_loopback, open_model


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.10", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_exactly_one_model_source(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of --model"):
        open_model(None, None, "ldm")
    with pytest.raises(ConfigError, match="exactly one of --model"):
        open_model(tmp_path, tmp_path, "ldm")
    assert open_model(tmp_path, None, "ldm") == (tmp_path, None, None)
    with pytest.raises(BundleError):
        open_model(None, tmp_path, "ldm")  # an empty folder is no bundle


def test_bind_port_zero_listens_on_a_free_port_and_a_taken_one_is_a_clear_error():
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it listens
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        sock.close()
