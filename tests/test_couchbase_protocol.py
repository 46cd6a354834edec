"""
txcb's Couchbase KV endpoint, driven by a sans-IO test client over
StringTransport: the codec (txcb.wire.couchbase), the bootstrap the SDKs
perform, every KV opcode's success and error statuses, durability,
collections, and hostile input (a test named after each case).
"""

import json
import struct

from twisted.internet.defer import Deferred
from twisted.trial import unittest
from zope.interface import implementer_only

from txcb.buckets.embedded import EmbeddedBucket
from txcb.interfaces import IBucket
from txcb.keyspaces import Keyspaces
from txcb.server.couchbase import GRANTED_FEATURES, CouchbaseServerFactory
from txcb.wire import cbbootstrap as WB
from txcb.wire import couchbase as W
from txcb.wire.sasl import plain_payload

from tests.support.couchbase import (
    ALL_FEATURES, HOST, CbHarness, HeldDiskBucket, counter_extras, responses, store_extras)
from tests.support.netstring import DeferredOnlyBucket, LogCapture

O = W.Opcode
S = W.Status
F = W.Feature
JSON_FLAGS = 0x02000000
LOCKED_CAS = 0xFFFFFFFFFFFFFFFF


class CouchbaseCodecTests(unittest.TestCase):
    """The sans-IO codec alone."""

    def test_codec_imports_no_twisted(self):
        import subprocess
        import sys
        from tests.support import ROOT
        code = ("import sys, txcb.wire.couchbase, txcb.wire.sasl; print(sorted(m for m in "
                "sys.modules if m.split('.')[0] in ('twisted', 'zope')))")
        self.assertEqual(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT).strip(),
                         b"[]")

    def test_alt_request_frame_carries_framing_extras(self):
        framing = W.durability_frame(W.Durability.MAJORITY, 9000)
        data = W.encode_request(O.SET, b"k", b"v", store_extras(1, 2), 7, 0, 3, 1, framing)
        self.assertEqual(data[0], W.ALT_REQ_MAGIC)
        self.assertEqual((data[2], data[3]), (len(framing), 1))
        [r] = W.Decoder().feed(data)
        self.assertEqual((r.opcode, r.framing, r.extras, r.key, r.value, r.opaque, r.vbucket,
                          r.datatype), (O.SET, framing, store_extras(1, 2), b"k", b"v", 7, 3, 1))
        self.assertEqual(W.parse_frame_infos(r.framing), W.FrameInfo(1, 9000, False))

    def test_frame_split_at_every_offset(self):
        data = (W.encode_request(O.GET, b"a", opaque=1)
                + W.encode_request(O.SET, b"b", b"xyz", store_extras(), opaque=2,
                                   framing=W.encode_frame_info(5)))
        for i in range(len(data) + 1):
            d = W.Decoder()
            got = d.feed(data[:i]) + d.feed(data[i:])
            self.assertEqual([(r.opcode, r.key, r.value) for r in got],
                             [(O.GET, b"a", b""), (O.SET, b"b", b"xyz")], i)
            self.assertEqual(d.buffered, 0)

    def test_response_without_framing_uses_magic_0x81(self):
        self.assertEqual(W.encode_response(O.GET, 1, 2)[0], 0x81)
        self.assertEqual(W.encode_response(O.GET, framing=b"\x00")[0], W.ALT_RES_MAGIC)

    def test_framing_extras_past_the_frame(self):
        for bad in (b"\x13\x01", b"\x1f", b"\xf0", b"\x12\x01\x00\x00"[:2]):
            self.assertRaises(W.FramingError, W.parse_frame_infos, bad)

    def test_framing_lengths_past_the_body_refused_from_the_header(self):
        data = bytearray(W.encode_request(O.GET, b"k", framing=b"\x00"))
        data[2] = 200       # framing length beyond the body
        with self.assertRaises(W.FrameError) as e:
            W.Decoder().feed(bytes(data))
        self.assertEqual(e.exception.status, S.EINVAL)

    def test_unknown_frame_info_id(self):
        with self.assertRaises(W.FramingError) as e:
            W.parse_frame_infos(b"\x70")
        self.assertEqual(e.exception.status, S.UNKNOWN_FRAME_INFO)

    def test_escaped_frame_info_id(self):
        with self.assertRaises(W.FramingError) as e:
            W.parse_frame_infos(b"\xf0\x01")         # id 15 + 1 = 16: unknown
        self.assertEqual(e.exception.status, S.UNKNOWN_FRAME_INFO)

    def test_durability_frames(self):
        self.assertEqual(W.parse_frame_infos(b"\x11\x03"), W.FrameInfo(3, None, False))
        self.assertEqual(W.parse_frame_infos(b"\x13\x01\x23\x28\x50"),
                         W.FrameInfo(1, 9000, True))
        with self.assertRaises(W.FramingError) as e:
            W.parse_frame_infos(b"\x11\x04")
        self.assertEqual(e.exception.status, S.DURABILITY_INVALID_LEVEL)
        self.assertRaises(W.FramingError, W.parse_frame_infos, b"\x12\x01\x00")

    def test_leb128_round_trip(self):
        for cid in (0, 1, 8, 127, 128, 300, 2 ** 32 - 1):
            self.assertEqual(W.split_collection(W.leb128(cid) + b"key"), (cid, b"key"))

    def test_overlong_leb128_collection_id(self):
        for bad in (b"\x80\x80\x80\x80\x80\x01k", b"\xff\xff\xff\xff\x7f", b"\x80", b""):
            self.assertRaises(ValueError, W.split_collection, bad)

    def test_hello_odd_length_feature_list(self):
        self.assertRaises(ValueError, WB.parse_hello, b"\x00\x03\x00")
        self.assertEqual(WB.parse_hello(b"\x00\x03\x00\x12"), [3, 0x12])

    def test_error_map_entries_have_name_desc_attrs(self):
        doc = json.loads(WB.error_map(2))
        self.assertEqual((doc["version"], doc["revision"]), (2, 1))
        for code, entry in doc["errors"].items():
            int(code, 16)
            self.assertEqual(set(entry) - {"retry"}, {"name", "desc", "attrs"}, code)
        for code in ("9", "86"):
            self.assertIn("retry-later", doc["errors"][code]["attrs"])
            self.assertIn("strategy", doc["errors"][code]["retry"])
        self.assertEqual(json.loads(WB.error_map(1))["version"], 1)

    def test_cluster_config_shape(self):
        doc = json.loads(WB.cluster_config(3, 11210, "b"))
        self.assertEqual(doc["rev"], 3)
        self.assertEqual(doc["nodeLocator"], "vbucket")
        self.assertEqual(doc["nodesExt"][0]["hostname"], "$HOST")
        self.assertEqual(doc["nodesExt"][0]["services"], {"kv": 11210})
        vbmap = doc["vBucketServerMap"]
        self.assertEqual((vbmap["hashAlgorithm"], vbmap["numReplicas"]), ("CRC", 0))
        self.assertEqual(vbmap["vBucketMap"], [[0]] * 1024)
        ssl = json.loads(WB.cluster_config(1, 11207, "b", ssl=True))
        self.assertEqual(ssl["nodesExt"][0]["services"], {"kvSSL": 11207})
        self.assertNotIn("vBucketServerMap", json.loads(WB.cluster_config(1, 1)))

    def test_body_over_limit_refused_before_buffering(self):
        d = W.Decoder(max_body=100)
        header = W.encode_request(O.SET, b"k", b"v" * 200, store_extras())[:24]
        with self.assertRaises(W.FrameError) as e:
            d.feed(header)
        self.assertEqual(e.exception.status, S.E2BIG)
        self.assertEqual(d.buffered, 0)

    def test_trickled_frame_costs_linear_memory(self):
        import time
        d = W.Decoder()
        data = W.encode_request(O.SET, b"k", b"v" * 200000, store_extras())
        started = time.process_time()
        for i in range(len(data) - 1):
            self.assertEqual(d.feed(data[i:i + 1]), [])
        self.assertEqual(d.buffered, len(data) - 1)
        [r] = d.feed(data[-1:])
        self.assertEqual(len(r.value), 200000)
        # A copy of the buffer per byte would be 2e10 bytes copied: minutes, not this.
        self.assertLess(time.process_time() - started, 5)

    def test_frames_behind_a_buffered_tail(self):
        d = W.Decoder()
        one = W.encode_request(O.GET, b"a", opaque=1)
        two = W.encode_request(O.GET, b"b", opaque=2)
        self.assertEqual(d.feed(one[:10]), [])
        self.assertEqual([r.key for r in d.feed(one[10:] + two + two[:5])], [b"a", b"b"])
        self.assertEqual([r.key for r in d.feed(bytearray(two[5:]))], [b"b"])
        self.assertEqual(d.buffered, 0)


class CouchbaseBootstrapTests(unittest.TestCase):
    """HELLO, SASL, the error map, SELECT_BUCKET and the cluster config."""

    def setUp(self):
        self.h = CbHarness(credentials={b"alice": b"secret"})

    def test_hello_grants_only_served_features(self):
        c = self.h.connect()
        granted = c.hello(ALL_FEATURES)
        self.assertEqual(set(granted), set(ALL_FEATURES) & GRANTED_FEATURES)
        self.assertNotIn(F.JSON, granted)
        self.assertNotIn(F.SNAPPY, granted)
        self.assertEqual(c.hello([]), [])

    def test_bootstrap_pipelined(self):
        c = self.h.connect()
        data = b"".join([
            c.frame(O.HELLO, b"agent", WB.hello_value(ALL_FEATURES)),
            c.frame(O.SASL_LIST_MECHS),
            c.frame(O.SASL_AUTH, b"PLAIN", plain_payload(b"alice", b"secret")),
            c.frame(O.GET_ERROR_MAP, value=b"\x00\x02"),
            c.frame(O.SELECT_BUCKET, b"default"),
            c.frame(O.GET_CLUSTER_CONFIG),
        ])
        out = responses(c.send(data))
        self.assertEqual([r.opcode for r in out], [O.HELLO, O.SASL_LIST_MECHS, O.SASL_AUTH,
                                                   O.GET_ERROR_MAP, O.SELECT_BUCKET,
                                                   O.GET_CLUSTER_CONFIG])
        self.assertEqual([r.status for r in out], [0] * 6)
        self.assertIn(b"SCRAM-SHA512", out[1].value.split())
        self.assertIn("errors", json.loads(out[3].value))
        self.assertEqual(json.loads(out[5].value)["name"], "default")

    def test_scram_every_mechanism(self):
        for mech in (b"SCRAM-SHA512", b"SCRAM-SHA256", b"SCRAM-SHA1"):
            c = self.h.connect()
            first, final = c.scram(mech, b"alice", b"secret")
            self.assertEqual(first.status, S.AUTH_CONTINUE)
            self.assertEqual(final.status, 0, mech)
            self.assertTrue(final.value.startswith(b"v="))
            self.assertEqual(c.one(O.SELECT_BUCKET, b"default").status, 0)

    def test_wrong_proof_auth_error(self):
        c = self.h.connect()
        log = LogCapture(self)
        first, final = c.scram(b"SCRAM-SHA512", b"alice", b"wrong")
        self.assertEqual(final.status, S.AUTH_ERROR)
        self.assertEqual(c.one(O.SELECT_BUCKET, b"default").status, S.AUTH_ERROR)
        text = " ".join(str(e.get("why", "")) for e in log.events)
        self.assertNotIn("wrong", text)

    def test_wrong_plain_password(self):
        c = self.h.connect()
        self.assertEqual(c.plain(b"alice", b"nope").status, S.AUTH_ERROR)
        self.assertEqual(c.plain(b"bob", b"secret").status, S.AUTH_ERROR)
        self.assertEqual(c.plain(b"alice", b"secret").status, 0)

    def test_malformed_scram(self):
        for payload in (b"", b"garbage", b"n,,", b"y,,n=alice", b"n,,n=alice"):
            c = self.h.connect()
            r = c.one(O.SASL_AUTH, b"SCRAM-SHA512", payload)
            self.assertEqual(r.status, S.AUTH_ERROR, payload)
        c = self.h.connect()
        first = c.one(O.SASL_AUTH, b"SCRAM-SHA512", b"n,,n=alice,r=abc")
        self.assertEqual(first.status, S.AUTH_CONTINUE)
        self.assertEqual(c.one(O.SASL_STEP, b"SCRAM-SHA512", b"c=biws,p=xx").status,
                         S.AUTH_ERROR)

    def test_sasl_step_without_auth(self):
        c = self.h.connect()
        self.assertEqual(c.one(O.SASL_STEP, b"SCRAM-SHA512", b"c=biws,r=x,p=y").status,
                         S.AUTH_ERROR)

    def test_replayed_scram_step(self):
        from txcb.wire.sasl import ScramClient
        c = self.h.connect()
        client = ScramClient(b"SCRAM-SHA256", b"alice", b"secret")
        first = c.one(O.SASL_AUTH, b"SCRAM-SHA256", client.first())
        final = client.final(first.value)
        self.assertEqual(c.one(O.SASL_STEP, b"SCRAM-SHA256", final).status, 0)
        other = self.h.connect()
        self.assertEqual(other.one(O.SASL_STEP, b"SCRAM-SHA256", final).status, S.AUTH_ERROR)
        # Replayed inside a new exchange: its server nonce differs, the old proof fails.
        again = other.one(O.SASL_AUTH, b"SCRAM-SHA256", client.first())
        self.assertEqual(again.status, S.AUTH_CONTINUE)
        self.assertNotEqual(again.value, first.value)
        self.assertEqual(other.one(O.SASL_STEP, b"SCRAM-SHA256", final).status, S.AUTH_ERROR)
        self.assertEqual(other.one(O.SELECT_BUCKET, b"default").status, S.AUTH_ERROR)
        # And a second step on the connection that succeeded is no step at all.
        self.assertEqual(c.one(O.SASL_STEP, b"SCRAM-SHA256", final).status, S.AUTH_ERROR)

    def test_unknown_mechanism(self):
        c = self.h.connect()
        self.assertEqual(c.one(O.SASL_AUTH, b"CRAM-MD5", b"x").status, S.AUTH_ERROR)

    def test_commands_before_auth_answer_auth_error(self):
        c = self.h.connect()
        c.hello()
        for opcode, key in ((O.GET, b"k"), (O.SELECT_BUCKET, b"default"),
                            (O.GET_CLUSTER_CONFIG, b""), (O.GET_ERROR_MAP, b"")):
            self.assertEqual(c.one(opcode, key).status, S.AUTH_ERROR, opcode)
        self.assertEqual(c.one(O.NOOP).status, 0)

    def test_commands_before_select_bucket_answer_no_bucket(self):
        c = self.h.connect()
        c.hello()
        c.plain(b"alice", b"secret")
        for opcode in (O.GET, O.SET, O.GET_COLLECTIONS_MANIFEST, O.GET_COLLECTION_ID):
            extras = store_extras() if opcode == O.SET else b""
            self.assertEqual(c.one(opcode, b"k", extras=extras).status, S.NO_BUCKET, opcode)
        config = c.config()
        self.assertNotIn("vBucketServerMap", config)
        self.assertEqual(config["nodesExt"][0]["services"], {"kv": HOST.port})

    def test_select_unknown_bucket(self):
        c = self.h.connect()
        c.plain(b"alice", b"secret")
        self.assertEqual(c.one(O.SELECT_BUCKET, b"nope").status, S.KEY_ENOENT)

    def test_error_map_versions(self):
        c = self.h.connect()
        c.plain(b"alice", b"secret")
        self.assertEqual(json.loads(c.one(O.GET_ERROR_MAP, value=b"\x00\x02").value)["version"],
                         2)
        self.assertEqual(json.loads(c.one(O.GET_ERROR_MAP, value=b"\x00\x01").value)["version"],
                         1)
        self.assertEqual(c.one(O.GET_ERROR_MAP, value=b"\x00").status, S.EINVAL)
        self.assertEqual(c.one(O.GET_ERROR_MAP, value=b"\x00\x00").status, S.EINVAL)

    def test_config_names_the_arrival_port(self):
        c = self.h.ready(user=b"alice", password=b"secret")
        config = c.config()
        self.assertEqual(config["nodesExt"][0]["services"], {"kv": HOST.port})
        self.assertEqual(config["nodesExt"][0]["hostname"], "$HOST")
        self.assertEqual(len(config["vBucketServerMap"]["vBucketMap"]), 1024)

    def test_hello_odd_length_feature_list(self):
        c = self.h.connect()
        log = LogCapture(self)
        self.assertEqual(c.one(O.HELLO, b"a", b"\x00\x03\x00").status, S.EINVAL)
        self.assertEqual(len([e for e in log.events if "HELLO" in e.get("log_format", "")]), 1)
        self.assertFalse(c.closed)

    def test_bad_magic_closes_with_one_line(self):
        log = LogCapture(self)
        c = self.h.connect()
        other = self.h.ready(user=b"alice", password=b"secret")
        c.send(b"\x42" * 24)
        self.assertTrue(c.closed)
        lines = [e for e in log.events if "protocol error" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(other.one(O.NOOP).status, 0)

    def test_framing_extras_past_the_frame_closes(self):
        c = self.h.ready(user=b"alice", password=b"secret")
        data = bytearray(c.frame(O.GET, b"k", framing=b"\x00"))
        data[2] = 100
        out = responses(c.send(bytes(data)))
        self.assertEqual([r.status for r in out], [S.EINVAL])
        self.assertTrue(c.closed)

    def test_connection_limit_refuses(self):
        h = CbHarness(max_connections=1)
        self.assertIsNotNone(h.connect())
        self.assertIsNone(h.connect())
        self.assertEqual(h.stats.rejected_connections, 1)

    def test_no_credentials_accepts_any(self):
        h = CbHarness()
        c = h.connect()
        first, final = c.scram(b"SCRAM-SHA512", b"anyone", b"anything")
        self.assertEqual(final.status, 0)
        self.assertEqual(c.one(O.SELECT_BUCKET, b"default").status, 0)


class CouchbaseKVTests(unittest.TestCase):
    """Every KV opcode's success and error statuses (XERROR and Collections on)."""

    def setUp(self):
        self.h = CbHarness(make_bucket=self.make_bucket())
        self.c = self.h.ready()

    def make_bucket(self):
        return None

    def store(self, key, value=b"v", flags=JSON_FLAGS, opcode=O.SET, **kw):
        return self.c.one(opcode, key, value, extras=store_extras(flags, 0), **kw)

    def test_set_get_round_trip_keeps_flags(self):
        r = self.store(b"k", b'{"a":1}', datatype=1)
        self.assertEqual(r.status, 0)
        self.assertNotEqual(r.cas, 0)
        g = self.c.one(O.GET, b"k")
        self.assertEqual((g.status, g.value, g.cas), (0, b'{"a":1}', r.cas))
        self.assertEqual(struct.unpack(">I", g.extras)[0], JSON_FLAGS)
        self.assertEqual(g.datatype, 0)

    def test_get_missing(self):
        self.assertEqual(self.c.one(O.GET, b"nope").status, S.KEY_ENOENT)

    def test_add_existing_and_replace_missing(self):
        self.assertEqual(self.store(b"k").status, 0)
        self.assertEqual(self.store(b"k", opcode=O.ADD).status, S.KEY_EEXISTS)
        self.assertEqual(self.store(b"new", opcode=O.ADD).status, 0)
        self.assertEqual(self.store(b"gone", opcode=O.REPLACE).status, S.KEY_ENOENT)
        self.assertEqual(self.store(b"k", opcode=O.REPLACE).status, 0)

    def test_cas_mismatch(self):
        cas = self.store(b"k").cas
        self.assertEqual(self.store(b"k", cas=cas + 1).status, S.KEY_EEXISTS)
        self.assertEqual(self.store(b"k", opcode=O.REPLACE, cas=cas + 1).status, S.KEY_EEXISTS)
        self.assertEqual(self.c.one(O.DELETE, b"k", cas=cas + 1).status, S.KEY_EEXISTS)
        self.assertEqual(self.store(b"k", cas=cas).status, 0)

    def test_delete(self):
        self.store(b"k")
        r = self.c.one(O.DELETE, b"k")
        self.assertEqual(r.status, 0)
        self.assertEqual(len(r.extras), 16)
        self.assertEqual(self.c.one(O.DELETE, b"k").status, S.KEY_ENOENT)

    def test_quiet_variants(self):
        out = self.c.request(O.SETQ, b"q", b"v", extras=store_extras())
        self.assertEqual(out, [])
        data = (self.c.frame(O.GETQ, b"missing") + self.c.frame(O.GETQ, b"q")
                + self.c.frame(O.ADDQ, b"q", b"v", extras=store_extras())
                + self.c.frame(O.DELETEQ, b"q") + self.c.frame(O.NOOP))
        out = responses(self.c.send(data))
        self.assertEqual([(r.opcode, r.status) for r in out],
                         [(O.GETQ, 0), (O.ADDQ, S.KEY_EEXISTS), (O.NOOP, 0)])

    def test_getk_echoes_the_key(self):
        self.store(b"k")
        self.assertEqual(self.c.one(O.GETK, b"k").key, W.leb128(0) + b"k")

    def test_mutation_token_from_the_bucket_seqno(self):
        r1 = self.store(b"a")
        r2 = self.store(b"b")
        uuid1, seq1 = struct.unpack(">QQ", r1.extras)
        uuid2, seq2 = struct.unpack(">QQ", r2.extras)
        self.assertEqual(uuid1, self.h.keyspaces.get("default").default.uuid)
        self.assertEqual((uuid1, seq2), (uuid2, seq1 + 1))

    def test_no_mutation_token_without_the_feature(self):
        c = self.h.ready(features=[F.XERROR, F.SELECT_BUCKET])
        r = c.one(O.SET, b"k", b"v", extras=store_extras())
        self.assertEqual((r.status, r.extras), (0, b""))

    def test_locked_document(self):
        self.store(b"k")
        lock = self.c.one(O.GET_LOCKED, b"k", extras=struct.pack(">I", 5))
        self.assertEqual(lock.status, 0)
        self.assertEqual(self.c.one(O.GET, b"k").cas, LOCKED_CAS)
        self.assertEqual(self.store(b"k").status, S.LOCKED)
        self.assertEqual(self.c.one(O.GET_LOCKED, b"k").status, S.LOCKED)
        self.assertEqual(self.c.one(O.UNLOCK_KEY, b"k", cas=lock.cas + 1).status, S.LOCKED)
        self.assertEqual(self.c.one(O.UNLOCK_KEY, b"k", cas=lock.cas).status, 0)
        self.assertEqual(self.c.one(O.UNLOCK_KEY, b"k", cas=lock.cas).status, S.NOT_LOCKED)
        self.assertEqual(self.store(b"k").status, 0)

    def test_locked_document_without_xerror_answers_tmpfail(self):
        c = self.h.ready(features=[F.SELECT_BUCKET])
        c.one(O.SET, b"k", b"v", extras=store_extras())
        lock = c.one(O.GET_LOCKED, b"k")
        self.assertEqual(c.one(O.SET, b"k", b"v", extras=store_extras()).status, S.ETMPFAIL)
        self.assertEqual(c.one(O.UNLOCK_KEY, b"k", cas=lock.cas + 1).status, S.ETMPFAIL)
        c.one(O.UNLOCK_KEY, b"k", cas=lock.cas)
        self.assertEqual(c.one(O.UNLOCK_KEY, b"k", cas=lock.cas).status, S.ETMPFAIL)

    def test_lock_missing_and_unlock_without_cas(self):
        self.assertEqual(self.c.one(O.GET_LOCKED, b"nope").status, S.KEY_ENOENT)
        self.assertEqual(self.c.one(O.UNLOCK_KEY, b"nope").status, S.EINVAL)

    def test_counter(self):
        r = self.c.one(O.INCREMENT, b"n", extras=counter_extras(1, 10))
        self.assertEqual((r.status, struct.unpack(">Q", r.value)[0]), (0, 10))
        self.assertEqual(len(r.extras), 16)
        r = self.c.one(O.INCREMENT, b"n", extras=counter_extras(5))
        self.assertEqual(struct.unpack(">Q", r.value)[0], 15)
        r = self.c.one(O.DECREMENT, b"n", extras=counter_extras(20))
        self.assertEqual(struct.unpack(">Q", r.value)[0], 0)
        no_create = counter_extras(1, 0, 0xFFFFFFFF)
        self.assertEqual(self.c.one(O.INCREMENT, b"m", extras=no_create).status, S.KEY_ENOENT)
        self.store(b"text", b"abc")
        self.assertEqual(self.c.one(O.INCREMENT, b"text", extras=counter_extras(1)).status,
                         S.DELTA_BADVAL)

    def test_append_prepend(self):
        self.store(b"k", b"mid", flags=0x03000002)
        self.assertEqual(self.c.one(O.APPEND, b"k", b">").status, 0)
        self.assertEqual(self.c.one(O.PREPEND, b"k", b"<").status, 0)
        g = self.c.one(O.GET, b"k")
        self.assertEqual((g.value, struct.unpack(">I", g.extras)[0]), (b"<mid>", 0x03000002))
        self.assertEqual(self.c.one(O.APPEND, b"nope", b"x").status, S.NOT_STORED)

    def test_touch_and_gat(self):
        self.store(b"k")
        self.assertEqual(self.c.one(O.TOUCH, b"k", extras=struct.pack(">I", 10)).status, 0)
        g = self.c.one(O.GAT, b"k", extras=struct.pack(">I", 0))
        self.assertEqual((g.status, g.value), (0, b"v"))
        self.assertEqual(self.c.one(O.TOUCH, b"nope", extras=struct.pack(">I", 1)).status,
                         S.KEY_ENOENT)
        self.assertEqual(self.c.one(O.GAT, b"nope", extras=struct.pack(">I", 1)).status,
                         S.KEY_ENOENT)
        self.c.one(O.TOUCH, b"k", extras=struct.pack(">I", 10))
        self.h.clock.advance(11)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)

    def test_get_meta_for_exists(self):
        cas = self.store(b"k", flags=7).cas
        r = self.c.one(O.GET_META, b"k", extras=b"\x02")
        self.assertEqual((r.status, r.cas, len(r.extras)), (0, cas, 21))
        deleted, flags, _exp, _seqno, _dt = struct.unpack(">IIIQB", r.extras)
        self.assertEqual((deleted, flags), (0, 7))
        self.assertEqual(self.c.one(O.GET_META, b"nope", extras=b"\x02").status, S.KEY_ENOENT)

    def test_not_my_vbucket_carries_the_config(self):
        r = self.c.one(O.GET, b"k", vbucket=1024)
        self.assertEqual(r.status, S.NOT_MY_VBUCKET)
        self.assertEqual(len(json.loads(r.value)["vBucketServerMap"]["vBucketMap"]), 1024)
        self.assertEqual(self.c.one(O.GET, b"k", vbucket=1023).status, S.KEY_ENOENT)

    def test_wrong_extras_and_empty_key(self):
        self.assertEqual(self.c.one(O.SET, b"k", b"v", extras=b"\x00").status, S.EINVAL)
        self.assertEqual(self.c.one(O.GET, b"k", b"value").status, S.EINVAL)
        self.assertEqual(self.c.one(O.GET, b"", cid=0).status, S.EINVAL)
        self.assertEqual(self.c.one(O.ADD, b"k", b"v", extras=store_extras(), cas=5).status,
                         S.EINVAL)

    def test_value_over_the_limit(self):
        self.assertEqual(self.store(b"k", b"x" * 5000).status, S.E2BIG)

    def test_subdoc_unknown_command(self):
        # 0xd0 / 0xd1 are served now (tests/test_couchbase_subdoc.py)
        self.assertEqual(self.c.one(0x77).status, S.UNKNOWN_COMMAND)

    def test_version_and_quit(self):
        self.assertTrue(self.c.one(O.VERSION).value.startswith(b"1.6"))
        out = self.c.request(O.QUIT)
        self.assertEqual([r.status for r in out], [0])
        self.assertTrue(self.c.closed)

    def test_observe_seqno(self):
        r = self.store(b"k")
        uuid, seqno = struct.unpack(">QQ", r.extras)
        o = self.c.one(O.OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=12)
        self.assertEqual(o.status, 0)
        fmt, vb, ouuid, persisted, current = struct.unpack(">BHQQQ", o.value)
        self.assertEqual((fmt, vb, ouuid, current), (0, 12, uuid, seqno))
        self.assertEqual(persisted, 0)     # an ephemeral bucket persists nothing
        self.assertEqual(self.c.one(O.OBSERVE_SEQNO, value=struct.pack(">Q", uuid + 1)).status,
                         S.KEY_ENOENT)
        self.assertEqual(self.c.one(O.OBSERVE_SEQNO, value=b"\x00").status, S.EINVAL)

    def test_durability_majority_answers_at_once(self):
        framing = W.durability_frame(W.Durability.MAJORITY, 9000)
        r = self.store(b"k", framing=framing)
        self.assertEqual(r.status, 0)

    def test_durability_persist_on_ephemeral_invalid_level(self):
        for level in (2, 3):
            r = self.store(b"k", framing=W.durability_frame(level))
            self.assertEqual(r.status, S.DURABILITY_INVALID_LEVEL)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)

    def test_durability_on_a_read_is_invalid(self):
        r = self.c.one(O.GET, b"k", framing=W.durability_frame(1))
        self.assertEqual(r.status, S.EINVAL)

    def test_preserve_expiry_on_a_read_not_supported(self):
        r = self.c.one(O.GET, b"k", framing=W.encode_frame_info(5))
        self.assertEqual(r.status, S.NOT_SUPPORTED)

    def test_unknown_frame_info(self):
        self.assertEqual(self.store(b"k", framing=b"\x70").status, S.UNKNOWN_FRAME_INFO)

    def test_overlong_leb128_collection_id(self):
        self.c.collections = False      # send the raw key as it is
        r = self.c.one(O.GET, b"\x80\x80\x80\x80\x80\x01k")
        self.assertEqual(r.status, S.EINVAL)
        self.assertFalse(self.c.closed)

    def test_unknown_collection(self):
        self.assertEqual(self.c.one(O.GET, b"k", cid=9).status, S.UNKNOWN_COLLECTION)

    def test_pipelined_reads_answered_in_order(self):
        for i in range(20):
            self.store(b"k%d" % i, b"%d" % i)
        data = b"".join(self.c.frame(O.GET, b"k%d" % i) for i in range(20))
        out = responses(self.c.send(data))
        self.assertEqual([r.value for r in out], [b"%d" % i for i in range(20)])

    def test_frames_split_at_every_offset(self):
        self.store(b"k", b"value")
        data = self.c.frame(O.GET, b"k") + self.c.frame(O.NOOP)
        for i in range(len(data) + 1):
            out = responses(self.c.send(data[:i]) + self.c.send(data[i:]))
            self.assertEqual([(r.opcode, r.status) for r in out], [(O.GET, 0), (O.NOOP, 0)], i)


class CouchbaseDeferredKVTests(CouchbaseKVTests):
    """The same statuses through a bucket's IBucket Deferreds."""

    def make_bucket(self):
        return lambda clock: DeferredOnlyBucket(clock=clock, max_value_size=4096,
                                             pager_interval=0)

    def test_served_through_deferreds(self):
        self.assertFalse(self.h.factory.is_sync(self.h.bucket))


class CouchbaseDurabilityTests(unittest.TestCase):
    """Persist levels wait for the disk; a timeout answers SYNC_WRITE_AMBIGUOUS."""

    def setUp(self):
        self.h = CbHarness(make_bucket=lambda clock: HeldDiskBucket(clock=clock,
                                                                    pager_interval=0))
        self.disk = self.h.bucket
        self.c = self.h.ready()

    def durable_set(self, key, level=3, timeout=None):
        return self.c.request(O.SET, key, b"v", extras=store_extras(),
                              framing=W.durability_frame(level, timeout))

    def test_persist_waits_for_the_disk(self):
        self.assertEqual(self.durable_set(b"k"), [])
        self.disk.commit()
        [r] = responses(self.c.take())
        self.assertEqual(r.status, 0)
        uuid, seqno = struct.unpack(">QQ", r.extras)
        o = self.c.one(O.OBSERVE_SEQNO, value=struct.pack(">Q", uuid))
        self.assertEqual(struct.unpack(">BHQQQ", o.value)[3:], (seqno, seqno))

    def test_persist_timeout_is_ambiguous(self):
        self.assertEqual(self.durable_set(b"k", 2, 500), [])
        self.h.clock.advance(0.5)
        [r] = responses(self.c.take())
        self.assertEqual(r.status, S.SYNC_WRITE_AMBIGUOUS)
        self.disk.commit()      # a late commit is ignored
        self.assertEqual(self.c.take(), b"")

    def test_replies_stay_in_order_behind_a_durable_write(self):
        data = (self.c.frame(O.SET, b"k", b"v", extras=store_extras(),
                             framing=W.durability_frame(3))
                + self.c.frame(O.GET, b"k"))
        self.assertEqual(self.c.send(data), b"")
        self.disk.commit()
        out = responses(self.c.take())
        self.assertEqual([r.opcode for r in out], [O.SET, O.GET])


class CouchbaseCollectionTests(unittest.TestCase):
    """Named collections are keyspaces of their own."""

    def setUp(self):
        self.h = CbHarness(collections=[("app", "users"), ("app", "orders")])
        self.c = self.h.ready()

    def test_named_collection_is_its_own_keyspace(self):
        users = self.h.named[("app", "users")]
        self.c.one(O.SET, b"k", b"default", extras=store_extras())
        self.c.one(O.SET, b"k", b"users", extras=store_extras(), cid=users.cid)
        self.assertEqual(self.c.one(O.GET, b"k").value, b"default")
        self.assertEqual(self.c.one(O.GET, b"k", cid=users.cid).value, b"users")
        r = self.c.one(O.SET, b"k2", b"x", extras=store_extras(), cid=users.cid)
        self.assertEqual(struct.unpack(">Q", r.extras[:8])[0], users.uuid)

    def test_get_collection_id(self):
        users = self.h.named[("app", "users")]
        r = self.c.one(O.GET_COLLECTION_ID, value=b"app.users")
        self.assertEqual(r.status, 0)
        self.assertEqual(struct.unpack(">QI", r.extras), (2, users.cid))
        r = self.c.one(O.GET_COLLECTION_ID, value=b"_default._default")
        self.assertEqual(struct.unpack(">QI", r.extras)[1], 0)
        self.assertEqual(self.c.one(O.GET_COLLECTION_ID, value=b"app.nope").status,
                         S.UNKNOWN_COLLECTION)
        self.assertEqual(self.c.one(O.GET_COLLECTION_ID, value=b"nope.x").status,
                         S.UNKNOWN_SCOPE)

    def test_manifest_lists_what_exists(self):
        doc = json.loads(self.c.one(O.GET_COLLECTIONS_MANIFEST).value)
        names = {(s["name"], c["name"]) for s in doc["scopes"] for c in s["collections"]}
        self.assertEqual(names, {("_default", "_default"), ("app", "users"),
                                 ("app", "orders")})

    def test_without_collections_keys_are_plain(self):
        c = self.h.ready(features=[F.XERROR, F.SELECT_BUCKET])
        c.one(O.SET, b"\x08k", b"v", extras=store_extras())
        self.assertEqual(self.c.one(O.GET, b"\x08k").value, b"v")   # cid 0, key "\x08k"


class CouchbaseFactoryTests(unittest.TestCase):

    def test_max_inflight_must_be_positive(self):
        self.assertRaises(ValueError, CouchbaseServerFactory,
                          Keyspaces.single(EmbeddedBucket(pager_interval=0)), max_inflight=0)

    def test_pending_deferreds_hold_order(self):
        pending = []

        @implementer_only(IBucket)
        class Slow(EmbeddedBucket):
            def get(self, key, ttl=0, quiet=False):
                d = Deferred()
                pending.append(d)
                return d

        h = CbHarness(bucket=Slow(pager_interval=0))
        c = h.ready()
        data = c.frame(O.GET, b"a") + c.frame(O.NOOP)
        self.assertEqual(c.send(data), b"")
        from txcb.errors import NotFoundError
        pending[0].errback(NotFoundError("no"))
        out = responses(c.take())
        self.assertEqual([(r.opcode, r.status) for r in out],
                         [(O.GET, S.KEY_ENOENT), (O.NOOP, 0)])


class CouchbaseTapTests(unittest.TestCase):
    """``twistd txcb --couchbase``: the option, the loopback rule, the listener."""

    def parse(self, *args):
        from txcb.service import tap
        o = tap.Options()
        o.parseOptions(list(args) + ["--ephemeral"])
        return o

    def test_bare_port_listens_on_loopback(self):
        o = self.parse("--couchbase", "11210", "--couchbase", "tcp:11211:interface=127.0.0.2")
        self.assertEqual(o["couchbase"], ["tcp:11210:interface=127.0.0.1",
                                          "tcp:11211:interface=127.0.0.2"])
        self.assertEqual(self.parse()["couchbase"], [])

    def test_beyond_loopback_needs_an_auth_file(self):
        from twisted.python import usage
        for endpoint in ("tcp:11210", "tcp:11210:interface=0.0.0.0", "tcp6:11210"):
            with self.assertRaises(usage.UsageError) as e:
                self.parse("--couchbase", endpoint)
            self.assertIn("--auth-file", str(e.exception))
            self.assertEqual(len(str(e.exception).splitlines()), 1)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("u:p\n")
        o = self.parse("--couchbase", "tcp:11210", "--auth-file", path)
        self.assertEqual(o["credentials"], {b"u": b"p"})

    def test_listen_failure_names_the_option(self):
        from txcb.service import tap
        from txcb.service.listen import ListenError
        o = self.parse("--couchbase", "11210")
        line = tap.startup_problem(o, ListenError("tcp:11210:interface=127.0.0.1",
                                                  "address already in use", "free {option}"))
        self.assertIn("(--couchbase)", line)
        self.assertIn("free --couchbase", line)

    def test_make_service_listens_with_a_counted_factory(self):
        from twisted.internet.testing import MemoryReactorClock
        from txcb.service import tap
        o = self.parse("--couchbase", "11210", "--metrics", "9100")
        r = MemoryReactorClock()
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.addCleanup(svc.stopService)
        [factory] = [f for p, f, _b, _i in r.tcpServers if p == 11210]
        self.assertIsInstance(factory, CouchbaseServerFactory)
        self.assertIsNotNone(factory.observer)
        self.assertEqual(factory.keyspaces.first.name, "default")


@implementer_only(IBucket)
class _DeferredDurableBucket(EmbeddedBucket):
    """A bucket served through Deferreds whose ``endure`` answers when told."""

    max_persist_to = 1

    def __init__(self, *a, **kw):
        EmbeddedBucket.__init__(self, *a, **kw)
        self.endures = []

    def endure(self, key, persist_to=-1, replicate_to=-1, cas=0, check_removed=False,
               timeout=5.0, interval=0.01):
        d = Deferred()
        self.endures.append((key, persist_to, cas, check_removed, timeout, d))
        return d


class CouchbaseDurabilityEdgeTests(unittest.TestCase):
    """Durable writes through Deferreds, connection loss, the in-flight cap, TLS."""

    def test_deferred_bucket_endures_persist_to_one(self):
        h = CbHarness(make_bucket=lambda clock: _DeferredDurableBucket(clock=clock,
                                                                       pager_interval=0))
        c = h.ready()
        out = c.request(O.DELETE, b"k", framing=W.durability_frame(3))
        self.assertEqual([r.status for r in out], [S.KEY_ENOENT])   # nothing to endure
        c.one(O.SET, b"k", b"v", extras=store_extras())
        self.assertEqual(c.request(O.SET, b"k", b"w", extras=store_extras(),
                                   framing=W.durability_frame(2, 1500)), [])
        key, persist_to, cas, removed, timeout, d = h.bucket.endures[0]
        self.assertEqual((key, persist_to, removed, timeout), (b"k", 1, False, 1.5))
        self.assertNotEqual(cas, 0)
        d.callback(None)
        [r] = responses(c.take())
        self.assertEqual((r.status, r.cas), (0, cas))
        self.assertEqual(c.request(O.DELETE, b"k", framing=W.durability_frame(3)), [])
        self.assertTrue(h.bucket.endures[1][3])       # check_removed for a delete
        from txcb.errors import TimeoutError
        h.bucket.endures[1][5].errback(TimeoutError("slow disk"))
        [r] = responses(c.take())
        self.assertEqual(r.status, S.SYNC_WRITE_AMBIGUOUS)

    def test_connection_lost_with_a_durable_write_pending(self):
        h = CbHarness(make_bucket=lambda clock: HeldDiskBucket(clock=clock, pager_interval=0))
        c = h.ready()
        c.request(O.SET, b"k", b"v", extras=store_extras(), framing=W.durability_frame(3, 100))
        c.p.connectionLost(None)
        h.bucket.commit()
        h.clock.advance(1)
        self.assertEqual(c.take(), b"")
        self.assertEqual(h.stats.connections, 0)

    def test_durable_writes_fill_the_inflight_cap(self):
        h = CbHarness(max_inflight=2,
                      make_bucket=lambda clock: HeldDiskBucket(clock=clock, pager_interval=0))
        c = h.ready()
        data = b"".join(c.frame(O.SET, b"k%d" % i, b"v", extras=store_extras(),
                                framing=W.durability_frame(3)) for i in range(3))
        self.assertEqual(c.send(data), b"")
        self.assertEqual(c.t.producerState, "paused")
        h.bucket.commit()
        h.bucket.commit()
        out = responses(c.take())
        self.assertEqual([r.status for r in out], [0, 0, 0])
        self.assertEqual(c.t.producerState, "producing")

    def test_tls_connection_config_names_kv_ssl(self):
        from twisted.internet.interfaces import INegotiated, ISSLTransport
        from twisted.internet.testing import StringTransport
        from zope.interface import directlyProvides
        from tests.support.couchbase import CbConn, PEER
        h = CbHarness()
        for tls in (ISSLTransport, INegotiated):    # INegotiated: TLSMemoryBIOProtocol
            p = h.factory.buildProtocol(PEER)
            t = StringTransport(hostAddress=HOST, peerAddress=PEER)
            directlyProvides(t, tls)
            p.makeConnection(t)
            c = CbConn(p, t)
            c.bootstrap()
            self.assertEqual(c.config()["nodesExt"][0]["services"], {"kvSSL": HOST.port})

    def test_frame_over_the_value_limit_refused_from_its_header(self):
        h = CbHarness(max_value_size=1000)
        c = h.ready()
        header = c.frame(O.SET, b"k", b"x" * 5000, extras=store_extras())[:24]
        out = responses(c.send(header))
        self.assertEqual([r.status for r in out], [S.E2BIG])
        self.assertTrue(c.closed)
        self.assertEqual(c.p.decoder.buffered, 0)


class CouchbaseObserverTests(unittest.TestCase):
    """An installed IRequestObserver (metrics) is told of every KV request."""

    def test_observer_sees_ops_and_statuses(self):
        seen = []

        class Observer:
            def request_done(self, op, status, started):
                seen.append((op, status))

        h = CbHarness()
        h.factory.observer = Observer()
        c = h.ready()
        c.one(O.SET, b"k", b"v", extras=store_extras())
        c.one(O.GET, b"k")
        c.one(O.GET, b"nope")
        c.one(O.ADD, b"k", b"v", extras=store_extras())
        c.one(O.INCREMENT, b"n", extras=counter_extras(1, 1))
        self.assertEqual(seen, [("upsert", 0), ("get", 0), ("get", S.KEY_ENOENT),
                                ("insert", S.KEY_EEXISTS), ("counter", 0)])


class CouchbaseStatusTests(unittest.TestCase):
    """Bucket errors as statuses: only the buckets' lock refusals are LOCKED."""

    def test_disk_failure_mentioning_a_lock_is_tmpfail(self):
        from twisted.python.failure import Failure
        from txcb.errors import TemporaryFailError
        from txcb.server.cbkv import KeyOp
        c = CbHarness().ready()
        op = KeyOp(W.Request(0x80, O.SET), None, b"k", W.NO_FRAME_INFO)
        disk = Failure(TemporaryFailError("the write could not be persisted: database is locked"))
        self.assertEqual(c.p.status_for(disk, op), S.ETMPFAIL)
        self.assertEqual(c.p.status_for(Failure(TemporaryFailError("the key is locked")), op),
                         S.LOCKED)


class CouchbaseFuzzTests(unittest.TestCase):
    """Seeded random frames: every one answered or the connection closed, no tracebacks."""

    def test_random_frames_never_fail_internally(self):
        import random
        rng = random.Random(14)
        opcodes = sorted(set(W.OPCODE_NAMES) - {O.QUIT, O.QUITQ}) + [0x42, 0xD0]
        log = LogCapture(self)
        h = CbHarness()
        for _ in range(300):
            c = h.ready()
            c.collections = rng.random() < 0.5     # else the raw key is the LEB128 prefix
            frames = []
            for _ in range(5):
                framing = bytes(rng.randrange(256) for _ in range(rng.choice((0, 0, 1, 2, 4))))
                extras = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 4, 8, 20))))
                key = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 6))))
                value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 2, 8))))
                frames.append(c.frame(rng.choice(opcodes), key, value, extras=extras,
                                      cas=rng.choice((0, 1, 2 ** 64 - 1)),
                                      vbucket=rng.choice((0, 5, 1023, 1024, 65535)),
                                      framing=framing, datatype=rng.randrange(4)))
            out = responses(c.send(b"".join(frames)))
            h.clock.advance(20)
            out += responses(c.take())
            self.assertTrue(c.closed or len(out) >= 1)
        self.assertEqual(log.failures(), [])


class CouchbaseIdleTests(unittest.TestCase):
    """--idle-timeout closes Couchbase connections that send nothing."""

    def test_idle_connection_closed_busy_one_kept(self):
        h = CbHarness(idle_timeout=10, make_bucket=lambda clock: HeldDiskBucket(
            clock=clock, pager_interval=0))
        idle = h.ready()
        busy = h.ready()
        busy.request(O.SET, b"k", b"v", extras=store_extras(),
                     framing=W.durability_frame(3, 60000))
        chatty = h.ready()
        for _ in range(8):
            h.clock.advance(2.5)
            chatty.one(O.GET_CLUSTER_CONFIG)      # what the SDK polls every 2.5 s
        self.assertTrue(idle.closed)
        self.assertFalse(busy.closed)             # a durable write is still pending
        self.assertFalse(chatty.closed)
        self.assertEqual(h.factory.idle.closed, 1)

    def test_no_sweeper_without_the_option(self):
        self.assertIsNone(CbHarness().factory.idle)


class DirectWriterTlsTests(unittest.TestCase):
    """Regression: replies on a TLS connection went to the raw socket, unencrypted."""

    def test_tls_replies_never_bypass_the_tls_wrapper(self):
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        from txcb.transport import direct_writer

        class SocketTransport:
            """What a tcp.Server looks like to direct_writer."""
            _tempDataLen = 0
            dataBuffer = b""
            TLS = False
            disconnecting = False
            connected = True

            def __init__(self):
                self.socket = self

            def send(self, data):
                raise AssertionError("raw send")

            def writeSomeData(self, data):
                raise AssertionError("raw write")

        raw = SocketTransport()
        self.assertIsNotNone(direct_writer(raw))
        wrapper = ProtocolWrapper(WrappingFactory(None), None)
        wrapper.transport = raw       # attribute reads fall through to the socket transport
        self.assertTrue(hasattr(wrapper, "writeSomeData"))
        self.assertIsNone(direct_writer(wrapper))
