"""SPDM cipher suites: the requester offers every suite it speaks and follows what ALGORITHMS selects; the
reference responder serves one suite (P-384 by default, any other when configured), in-process and over the
socket; selections that were not offered, more than one bit, and a leaf on the wrong curve are refused."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys

import attrs
import pytest

from teeio_conformance.contract import framing as fr
from teeio_conformance.contract import spdm as sp
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device.device import DeviceConfig
from teeio_conformance.reference_impl.device.identity import DeviceIdentity
from teeio_conformance.reference_impl.transport.client import EmuClient, TransportError
from teeio_conformance.reference_impl.transport.served import served_device_factory
from teeio_conformance.reference_impl.transport.server import EmuServer, start_in_thread
from tests.transport.test_sessions import _in_session, _read_chain

SMALL = sp.CipherSuite(sp.BaseHash.SHA_256, sp.BaseAsym.ECDSA_P256, sp.Dhe.SECP_256_R1, sp.Aead.AES_128_GCM)
MIXED = sp.CipherSuite(sp.BaseHash.SHA_384, sp.BaseAsym.ECDSA_P256, sp.Dhe.SECP_384_R1, sp.Aead.AES_128_GCM)
STATE = td.encode(td.GetDeviceInterfaceState(interface_id=td.InterfaceId(function_id=0x3A00)))
PING = b"\x12\xfe\x00\x00ping"


def _identity(suite: sp.CipherSuite, seed: int = 3) -> DeviceIdentity:
    return DeviceIdentity(seed=seed, curve=suite.curve_name)


def _responder(suite: sp.CipherSuite, identity: DeviceIdentity | None = None) -> sp.SpdmResponder:
    identity = identity or _identity(suite)
    sign = functools.partial(identity.sign, hash_name=suite.hash_algorithm.name)
    return sp.SpdmResponder(identity.certificate_chain(), sign, suite=suite)


def _vca(req: sp.SpdmRequester, rsp: sp.SpdmResponder, algs: fr.Algorithms | None = None) -> fr.Algorithms:
    offer = sp.offer_algorithms()
    algs = algs or sp.select_session_algorithms(offer, rsp.suite)
    assert algs is not None
    for request, response, selected in (
        (fr.get_version(), fr.Version().encode(), None),
        (sp.get_capabilities(), fr.Capabilities(flags=sp.SESSION_FLAGS).encode(), None),
        (offer.encode(), algs.encode(), algs),
    ):
        req.vca(request, response)
        rsp.vca(request, response, algorithms=selected)
    return algs


# ------------------------------------------------------------------ every suite between the state objects
@pytest.mark.parametrize("suite", sp.CipherSuite.all(), ids=str)
def test_every_suite_opens_updates_its_keys_and_ends_a_session(suite):
    identity = _identity(suite)
    req, rsp = sp.SpdmRequester(trusted_root=identity.root_certificate()), _responder(suite, identity)
    _vca(req, rsp)
    assert req.suite == suite
    _read_chain(req, rsp)
    assert len(req.digest or b"") == suite.hash_size
    request = req.key_exchange()
    assert len(request) == sp._KE_FIXED + suite.dhe_size + 2
    answer = rsp.handle(request)
    assert answer[1] == sp.Code.KEY_EXCHANGE_RSP, answer
    assert len(answer) == sp._KER_FIXED + suite.dhe_size + 2 + suite.sig_size + suite.hash_size
    sid = req.on_key_exchange_rsp(answer)
    finish = req.finish(sid)
    assert len(finish) == 4 + suite.hash_size
    req.on_finish_rsp(sid, finish, _in_session(req, rsp, sid, finish))
    assert rsp.take_events() == [("established", sid)]
    assert _in_session(req, rsp, sid, PING) == PING
    for op in sp.KeyUpdateOp:
        request = req.key_update(sid, op, 7)
        ack = _in_session(req, rsp, sid, request)
        req.on_key_update_ack(sid, request, ack)
        assert _in_session(req, rsp, sid, PING) == PING
    req.on_end_session_ack(sid, _in_session(req, rsp, sid, req.end_session(sid)))
    assert rsp.take_events() == [("ended", sid)] and req.sessions == {} and rsp.sessions == {}


def test_the_suite_value_derives_its_sizes_and_refuses_what_it_does_not_speak():
    assert (
        sp.CipherSuite() == sp.DEFAULT_SUITE and str(sp.DEFAULT_SUITE) == "SHA_384/ECDSA_P384/SECP_384_R1/AES_256_GCM"
    )
    assert (sp.H, sp.DHE_SIZE, sp.SIG_SIZE, sp.KEY_SIZE) == (48, 96, 96, 32)
    assert (SMALL.hash_size, SMALL.dhe_size, SMALL.sig_size, SMALL.key_size) == (32, 64, 64, 16)
    assert (MIXED.hash_size, MIXED.dhe_size, MIXED.sig_size, MIXED.key_size) == (48, 96, 64, 16)
    assert len(set(sp.CipherSuite.all())) == 16
    with pytest.raises(InvalidArgument, match=r"CipherSuite\.hash"):
        sp.CipherSuite(hash=0x04)  # SHA-512
    with pytest.raises(InvalidArgument, match=r"CipherSuite\.aead"):
        sp.CipherSuite(aead=0x04)  # ChaCha20-Poly1305


# ------------------------------------------------------------------ selections the requester refuses
def _tables(algs: fr.Algorithms, alg_type: int, supported: int) -> fr.Algorithms:
    return attrs.evolve(
        algs,
        alg_structs=tuple(
            attrs.evolve(s, supported=supported) if s.alg_type == alg_type else s for s in algs.alg_structs
        ),
    )


BAD_SELECTIONS = {
    "hash not offered": ("BaseHashSel", lambda a: attrs.evolve(a, base_hash_sel=0x04)),
    "two hashes": ("BaseHashSel", lambda a: attrs.evolve(a, base_hash_sel=0x03)),
    "asym not offered": ("BaseAsymSel", lambda a: attrs.evolve(a, base_asym_sel=0x01)),
    "two asyms": ("BaseAsymSel", lambda a: attrs.evolve(a, base_asym_sel=0x90)),
    "dhe not offered": ("DHE AlgSupported", lambda a: _tables(a, fr.AlgType.DHE, 0x20)),
    "two dhe groups": ("DHE AlgSupported", lambda a: _tables(a, fr.AlgType.DHE, 0x18)),
    "aead not offered": ("AEAD AlgSupported", lambda a: _tables(a, fr.AlgType.AEAD, 0x04)),
    "two aeads": ("AEAD AlgSupported", lambda a: _tables(a, fr.AlgType.AEAD, 0x03)),
    "key schedule not offered": ("KEY_SCHEDULE AlgSupported", lambda a: _tables(a, fr.AlgType.KEY_SCHEDULE, 2)),
    "opaque format 0": ("OtherParamsSelection", lambda a: attrs.evolve(a, other_params_selection=0x01)),
}


@pytest.mark.parametrize("case", sorted(BAD_SELECTIONS))
def test_a_selection_not_offered_or_of_two_bits_is_refused_and_changes_nothing(case):
    field, spoil = BAD_SELECTIONS[case]
    req, rsp = sp.SpdmRequester(trusted_root=_identity(SMALL).root_certificate()), _responder(SMALL)
    offer = sp.offer_algorithms()
    good = sp.select_session_algorithms(offer, SMALL)
    assert good is not None
    caps = fr.Capabilities(flags=sp.SESSION_FLAGS).encode()
    for request, response in ((fr.get_version(), fr.Version().encode()), (sp.get_capabilities(), caps)):
        req.vca(request, response)
        rsp.vca(request, response)
    with pytest.raises(sp.SessionError, match=field) as info:
        req.vca(offer.encode(), spoil(good).encode())
    assert info.value.code == sp.ErrorCode.INVALID_REQUEST
    assert req.suite is None
    with pytest.raises(sp.SessionError, match="no secure session without a cipher suite"):
        req.on_digests(bytes([fr.SPDM_VERSION, sp.Code.DIGESTS, 0, 1]) + bytes(SMALL.hash_size))
    # nothing moved: the good answer still makes a transcript both ends agree on, so a session opens
    req.vca(offer.encode(), good.encode())
    rsp.vca(offer.encode(), good.encode(), algorithms=good)
    assert req.suite == SMALL
    _read_chain(req, rsp)
    sid = req.on_key_exchange_rsp(rsp.handle(req.key_exchange()))
    finish = req.finish(sid)
    req.on_finish_rsp(sid, finish, _in_session(req, rsp, sid, finish))
    assert _in_session(req, rsp, sid, PING) == PING


def test_a_responder_that_selects_no_session_suite_leaves_vca_standing_and_sessions_closed():
    req, rsp = sp.SpdmRequester(), _responder(sp.DEFAULT_SUITE)
    none = fr.Algorithms(
        alg_structs=tuple(fr.AlgStruct(alg_type=s.alg_type) for s in sp.offer_algorithms().alg_structs)
    )
    _vca(req, rsp, none)
    assert req.suite is None
    assert fr.SpdmError.decode(rsp.handle(req.get_digests())).code == sp.ErrorCode.UNEXPECTED_REQUEST
    with pytest.raises(InvalidArgument):
        req.key_exchange()


def test_the_client_names_the_field_of_a_bad_selection(monkeypatch):
    from teeio_conformance.reference_impl.transport import server as srv

    select = sp.select_session_algorithms

    def two_hashes(offer, suite):  # type: ignore[no-untyped-def]
        return attrs.evolve(select(offer, suite), base_hash_sel=0x03)

    with start_in_thread(served_device_factory(DeviceConfig())) as handle:
        monkeypatch.setattr(srv.sp, "select_session_algorithms", two_hashes)
        with pytest.raises(TransportError, match="BaseHashSel 0x3 selects more than one algorithm"):
            EmuClient.connect(handle.host, handle.port)


# ------------------------------------------------------------------ the leaf's curve
def test_a_leaf_on_another_curve_than_the_selected_asym_is_refused():
    p384, p256 = _identity(sp.DEFAULT_SUITE), _identity(SMALL)
    buffer = sp.cert_chain_buffer(p256.certificate_chain())
    with pytest.raises(sp.ChainError, match="ECDSA_P384, which needs a P-384 key"):
        sp.verify_chain(buffer, p256.root_certificate())
    assert sp.verify_chain(buffer, p256.root_certificate(), MIXED).curve.name == "secp256r1"
    # a responder whose chain is P-256 while ALGORITHMS selected P-384: the requester refuses it as it reads it
    suite = attrs.evolve(sp.DEFAULT_SUITE, asym=sp.BaseAsym.ECDSA_P256)
    req, rsp = sp.SpdmRequester(trusted_root=p256.root_certificate()), _responder(suite, p256)
    offer = sp.offer_algorithms()
    liar = sp.select_session_algorithms(offer, sp.DEFAULT_SUITE)
    assert liar is not None
    _vca(req, rsp, liar)
    rsp.vca(offer.encode(), liar.encode(), algorithms=sp.select_session_algorithms(offer, suite))
    assert req.suite == sp.DEFAULT_SUITE
    with pytest.raises(sp.ChainError, match="secp256r1 key"):
        _read_chain(req, rsp)
    assert not req.has_chain
    # nor is a chain verified earlier adopted for a connection that selected the other curve
    good = sp.SpdmRequester(trusted_root=p256.root_certificate())
    _vca(good, rsp, sp.select_session_algorithms(offer, suite))
    _read_chain(good, rsp)
    assert good.leaf_key is not None
    assert req.digest == sp.DEFAULT_SUITE.digest(good.chain)  # DIGESTS named it
    with pytest.raises(sp.ChainError, match="P-384"):
        req.adopt_chain(good.chain, good.leaf_key)
    # and a responder is never built over a key its suite cannot sign with
    with pytest.raises(InvalidArgument, match="leaf key is P-384"):
        sp.SpdmResponder(p384.certificate_chain(), p384.sign, suite=SMALL)
    with socket.socket() as listener, pytest.raises(InvalidArgument, match="leaf key is P-384"):
        EmuServer(listener, served_device_factory(DeviceConfig())(), suite=SMALL)


def test_a_p256_identity_is_its_own_and_the_p384_one_is_unchanged():
    p384, p256 = DeviceIdentity(seed=5), DeviceIdentity(seed=5, curve="P-256")
    assert p384.certificate_chain() == DeviceIdentity(seed=5, curve="P-384").certificate_chain()
    assert p256.certificate_chain() == DeviceIdentity(seed=5, curve="P-256").certificate_chain()  # deterministic
    assert p256.root_certificate() != p384.root_certificate()
    assert repr(p256) == "DeviceIdentity(seed=5, curve='P-256')" and repr(p384) == "DeviceIdentity(seed=5)"
    with pytest.raises(InvalidArgument, match="curve"):
        DeviceIdentity(seed=5, curve="P-521")
    with pytest.raises(InvalidArgument, match="hash_name"):
        p256.sign(b"x", "md5")


# ------------------------------------------------------------------ over the socket
def test_the_client_opens_a_session_with_a_served_sha256_p256_aes128_device_and_asks_tdisp_inside():
    config = DeviceConfig(identity_curve="P-256")
    root = DeviceIdentity(seed=config.seed, curve="P-256").root_certificate()
    with (
        start_in_thread(served_device_factory(config), suite=SMALL) as handle,
        EmuClient.connect(handle.host, handle.port, trusted_root=root) as client,
    ):
        assert client.algorithms is not None and client.requester.suite == SMALL
        assert client.algorithms.base_hash_sel == fr.HASH_SHA_256
        sid = client.open_session()
        assert isinstance(td.decode_response(client.send(1, STATE, session_id=sid)), td.DeviceInterfaceState)
        client.key_update(sid)
        assert isinstance(td.decode_response(client.send(1, STATE, session_id=sid)), td.DeviceInterfaceState)
        client.end_session(sid)
        assert handle.server.responder_errors == 0


def _serve_device(*flags: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "teeio_conformance.conformance.cli", "serve-device", "--port", "0", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_device_takes_the_suite_as_spdm_emus_flags(tmp_path):
    flags = ("--hash", "SHA_256", "--asym", "ECDSA_P256", "--dhe", "SECP_256_R1", "--aead", "AES_128_GCM")
    proc = _serve_device(*flags)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["cipher_suite"] == str(SMALL)
        root = DeviceIdentity(seed=DeviceConfig().seed, curve="P-256").root_certificate()
        with EmuClient.connect(info["host"], info["port"], trusted_root=root) as client:
            sid = client.open_session()
            assert client.requester.suite == SMALL
            assert isinstance(td.decode_response(client.send(1, STATE, session_id=sid)), td.DeviceInterfaceState)
            client.end_session(sid)
    finally:
        proc.kill()
        proc.wait()
    # a suite the device's identity cannot sign: refused at start, naming both curves
    config = tmp_path / "device.json"
    config.write_text('{"identity_curve": "P-384"}')
    mismatch = _serve_device("--asym", "ECDSA_P256", "--config", str(config))
    _out, err = mismatch.communicate(timeout=60)
    assert mismatch.returncode == 2 and "leaf key is P-384" in err, err
