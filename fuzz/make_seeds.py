#!/usr/bin/env python3
"""Write the hand-made seeds of the h2_server, upstream_response,
redis_reply and prom fuzz targets into fuzz/corpus/. The files are committed; run
this again only to change a seed (libFuzzer's merged finds sit next to
them and are kept).

h2_server inputs are the frames a client sends after the connection preface
and an empty SETTINGS frame (the driver writes those). upstream_response
inputs are one mode byte (see fuzz_upstream_response.c) and the upstream's
response bytes. A frame of type 0xfe makes either driver pause until the
gateway has answered what came before it.

HPACK here is literal fields without indexing and without Huffman coding:
every decoder must take it, and the fuzzer mutates names and values in
place.

prom inputs are /metrics bodies as vLLM and SGLang serve them, and the
malformed lines the reader must refuse."""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
DRAIN, READING, PAUSE = 0xFC, 0xFD, 0xFE
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def hpack_int(value, bits, high=0):
    top = (1 << bits) - 1
    if value < top:
        return bytes([high | value])
    out = [high | top]
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def block(fields):
    out = b""
    for name, value in fields:
        name, value = name.encode(), value.encode()
        out += b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    return out


def request(path, method="GET", extra=()):
    return block([(":method", method), (":scheme", "http"), (":authority", "fuzz"), (":path", path)] + list(extra))


def headers(sid, fields, end_stream=True):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, fields)


def pause():
    return frame(PAUSE, 0, 0)


def toggle_reading():
    return frame(READING, 0, 0)


def settings(*pairs, ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window(sid, inc):
    return frame(WINDOW, 0, sid, struct.pack(">I", inc))


def rst(sid, code):
    return frame(RST, 0, sid, struct.pack(">I", code))


def h2_server_seeds():
    s = {}
    s["get"] = headers(1, request("/"))
    s["head"] = headers(1, request("/", "HEAD"))
    s["post_echo"] = headers(1, request("/echo", "POST", [("content-length", "11")]), False) + frame(
        DATA, END_STREAM, 1, b"hello world")
    s["post_pieces_padded"] = (headers(1, request("/echo", "POST"), False) + frame(DATA, 0, 1, b"one ") +
                               frame(DATA, PADDED, 1, b"\x05two " + b"\0" * 5) + frame(DATA, END_STREAM, 1, b"three"))
    s["body_too_large"] = headers(1, request("/echo", "POST"), False) + b"".join(
        frame(DATA, 0, 1, b"x" * 4096) for _ in range(3)) + frame(DATA, END_STREAM, 1)
    fields = request("/continued", "GET", [("x-a", "1" * 40), ("x-b", "2" * 40)])
    s["continuation"] = (frame(HEADERS, END_STREAM, 1, fields[:20]) + frame(CONT, 0, 1, fields[20:60]) +
                         frame(CONT, END_HEADERS, 1, fields[60:]))
    s["continuation_other_stream"] = frame(HEADERS, END_STREAM, 1, fields[:20]) + frame(CONT, END_HEADERS, 3, fields[20:])
    s["settings_flood"] = b"".join(settings((1, 4096), (3, 100), (4, 65535 + i)) for i in range(200)) + headers(1, request("/"))
    s["settings_ack_flood"] = b"".join(settings(ack=True) for _ in range(100)) + headers(1, request("/"))
    s["ping_flood"] = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(300)) + headers(1, request("/"))
    s["rapid_reset"] = b"".join(headers(2 * i + 1, request("/later")) + rst(2 * i + 1, 8) for i in range(100))
    s["rapid_reset_paused"] = b"".join(headers(2 * i + 1, request("/big")) + pause() + rst(2 * i + 1, 8) for i in range(20))
    s["header_list_bomb"] = headers(1, request("/", "GET", [("x-h%d" % i, "v" * 100) for i in range(60)]))
    s["header_count_bomb"] = headers(1, request("/", "GET", [("x", "") for _ in range(300)]))
    s["big_windows"] = (headers(1, request("/big")) + pause() + window(0, 1 << 20) + window(1, 1 << 20) + pause() +
                        window(1, 1 << 16) + pause())
    s["tiny_window"] = (settings((4, 10)) + headers(1, request("/big")) + headers(3, request("/trailers")) + pause() +
                        b"".join(window(1, 7000) + window(3, 7000) + window(0, 14000) + pause() for _ in range(4)))
    s["window_overflow"] = headers(1, request("/big")) + pause() + window(1, 0x7FFFFFFF) + window(1, 0x7FFFFFFF)
    s["stream_body"] = (headers(1, request("/stream", "POST"), False) + frame(DATA, 0, 1, b"part one") + pause() +
                        frame(DATA, 0, 1, b"part two") + headers(1, block([("x-trailer", "t")])))
    s["stream_body_reset"] = headers(1, request("/stream", "POST"), False) + pause() + frame(DATA, 0, 1, b"x" * 100) + rst(1, 8)
    s["later_then_reset"] = headers(1, request("/later")) + headers(3, request("/later")) + rst(3, 8) + pause() + rst(1, 8)
    s["many_paths"] = b"".join(headers(2 * i + 1, request(p)) for i, p in enumerate(
        ["/trailers", "/empty", "/reset", "/later", "/echo", "/big", "/"]))
    s["connect_and_missing_path"] = (headers(1, block([(":method", "CONNECT"), (":authority", "fuzz:443")])) +
                                     headers(3, block([(":method", "GET"), (":scheme", "http")])))
    s["priority_goaway"] = (frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)) +
                            frame(HEADERS, END_HEADERS | END_STREAM | PRIO, 3, struct.pack(">IB", 1, 200) + request("/")) +
                            frame(GOAWAY, 0, 0, struct.pack(">II", 3, 0)))
    s["too_many_streams"] = b"".join(headers(2 * i + 1, request("/later")) for i in range(70))
    s["drain_midway"] = (headers(1, request("/later")) + headers(3, request("/stream", "POST"), False) +
                         frame(DRAIN, 0, 0) + frame(DATA, END_STREAM, 3, b"rest") + headers(5, request("/")))
    s["drain_idle"] = frame(DRAIN, 0, 0)
    s["not_reading"] = (toggle_reading() + headers(1, request("/big")) + b"".join(frame(PING, 0, 0, b"p" * 8) for _ in range(50)) +
                        window(0, 1 << 20) + window(1, 1 << 20) + pause() + toggle_reading() + pause())
    s["stream_body_whole"] = headers(1, request("/stream", "POST"), False) + frame(DATA, END_STREAM, 1, b"all of it")
    # nghttp2 gives up once 1000 ACKs wait behind output nobody reads.
    s["ack_flood_not_reading"] = (toggle_reading() + headers(1, request("/big")) + window(0, 1 << 20) + window(1, 1 << 20) +
                                  pause() + b"".join(settings() for _ in range(1100)) + pause())
    s["data_on_idle_stream"] = frame(DATA, END_STREAM, 5, b"nobody") + headers(1, request("/"))
    # RFC 9113 5.1.1: a lower stream id, after the higher stream is done or
    # while it is open; trailers on streams closed before the client ended
    # them (reset, answered early) are still let through.
    s["lower_stream_id"] = headers(5, request("/")) + pause() + headers(3, request("/"))
    s["lower_stream_id_open"] = headers(7, request("/later")) + headers(1, request("/"))
    s["trailers_after_close"] = (headers(1, request("/reset", "POST"), False) + headers(3, request("/stream", "POST"), False) +
                                 pause() + headers(1, block([("x-trailer", "t")])) + headers(3, block([("x-trailer", "t")])) +
                                 headers(5, request("/")))
    # An error at the end of the header block while the client's window is
    # shut and it goes on sending a body.
    s["head_error_zero_window"] = (settings((4, 0)) + headers(1, request("/", "POST", [("x-h%d" % i, "v" * 100) for i in range(60)]), False) +
                                   pause() + b"".join(frame(DATA, 0, 1, b"b" * 10) for _ in range(20)) + frame(DATA, END_STREAM, 1))
    return s


def h1(mode, text):
    return bytes([mode]) + (text.encode() if isinstance(text, str) else text)


def status(code):
    return block([(":status", str(code))])


def upstream_seeds():
    s = {}
    s["h1_length"] = h1(0x00, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: a\r\n\r\nhello")
    s["h1_chunked_trailers"] = h1(0x80, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    s["h1_chunked_cut5"] = h1(0x20, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n")
    s["h1_continue_then_200"] = h1(0x04, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                                         "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    s["h1_until_close"] = h1(0x00, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close")
    s["h1_hop_by_hop"] = h1(0x00, "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                                  "Upgrade: h2c\r\nTE: trailers\r\nProxy-Connection: x\r\nContent-Length: 0\r\n\r\n")
    s["h1_204_304"] = h1(0x00, "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
    s["h1_head"] = h1(0x02, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    s["h1_truncated_head"] = h1(0x00, "HTTP/1.1 200 OK\r\nContent-Le")
    s["h1_truncated_body"] = h1(0x40, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it")
    s["h1_truncated_chunked"] = h1(0x00, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort")
    s["h1_bad_chunk"] = h1(0x00, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    s["h1_101"] = h1(0x00, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    s["h1_early_413_big_post"] = h1(0x06, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
    s["h1_post_small"] = h1(0x04, "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew")
    s["h1_pause"] = h1(0x08, "HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + "p" * 3000)
    s["h1_pause_chunked_cut64"] = h1(0x48, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                     "".join("40\r\n" + "c" * 64 + "\r\n" for _ in range(20)) + "0\r\n\r\n")
    s["h1_cancel_head"] = h1(0x10, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    s["h1_cancel_data_cut5"] = h1(0x38, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world!")
    s["h1_two_responses"] = h1(0x00, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                                     "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    s["h1_huge_head"] = h1(0x00, "HTTP/1.1 200 OK\r\n" + "".join("X-%d: %s\r\n" % (i, "v" * 80) for i in range(60)) + "\r\n")
    s["h1_garbage"] = h1(0x00, b"\x00\xffnot http at all\r\n\r\n")

    first = "HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n" + "k" * 25
    assert len(first) == 64, len(first)
    s["h1_keepalive_reuse_cut64"] = h1(0xC0, first + "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
    s["h1_keepalive_stale_cut64"] = h1(0xC0, first)
    s["h1_keepalive_leftover"] = h1(0x80, first + "HTTP/1.1 200 OK\r\n")

    sid = 1
    ok_head = status(200) + block([("content-type", "text/plain"), ("x-a", "a")])
    s["h2_head_data"] = bytes([0x01]) + headers(sid, ok_head, False) + frame(DATA, END_STREAM, sid, b"hello")
    s["h2_trailers_only"] = bytes([0x81]) + headers(sid, status(200) + block([("grpc-status", "0")]))
    s["h2_data_trailers"] = bytes([0x81]) + (headers(sid, ok_head, False) + frame(DATA, 0, sid, b"body") +
                                             headers(sid, block([("grpc-status", "0"), ("grpc-message", "ok")])))
    s["h2_100_then_200"] = bytes([0x01]) + (headers(sid, status(100), False) + headers(sid, status(200), False) +
                                            frame(DATA, END_STREAM, sid, b"done"))
    s["h2_continuation"] = bytes([0x01]) + (frame(HEADERS, 0, sid, ok_head[:10]) + frame(CONT, 0, sid, ok_head[10:30]) +
                                            frame(CONT, END_HEADERS | 0, sid, ok_head[30:]) + frame(DATA, END_STREAM, sid))
    s["h2_refused"] = bytes([0x01]) + rst(sid, 7)
    s["h2_goaway_refused"] = bytes([0x01]) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))
    s["h2_reset_after_head"] = bytes([0x01]) + headers(sid, ok_head, False) + pause() + rst(sid, 1)
    s["h2_bad_status"] = bytes([0x01]) + headers(sid, block([(":status", "2x0")]))
    s["h2_connection_field"] = bytes([0x01]) + headers(sid, status(200) + block([("connection", "close")]))
    s["h2_no_status"] = bytes([0x01]) + headers(sid, block([("x-a", "a")]))
    s["h2_settings_zero_streams"] = bytes([0x01]) + (settings((3, 0), (4, 1 << 20), (5, 1 << 14)) + settings(ack=True) +
                                                     frame(PING, 0, 0, b"\0" * 8) + window(0, 1000) +
                                                     headers(sid, ok_head))
    s["h2_push_promise"] = bytes([0x01]) + frame(PUSH, END_HEADERS, sid, struct.pack(">I", 2) + request("/pushed"))
    # Paused (mode bit 3), so the window stays shut: 18000 bytes exceed the
    # 16384 the gateway's SETTINGS ask for once they are acknowledged.
    s["h2_flow_violation"] = bytes([0x09]) + settings(ack=True) + headers(sid, ok_head, False) + pause() + b"".join(
        frame(DATA, 0, sid, b"f" * 4500) for _ in range(4))
    s["h2_pause_big_data"] = bytes([0x09]) + headers(sid, ok_head, False) + frame(DATA, 0, sid, b"d" * 16000) + pause() + frame(
        DATA, END_STREAM, sid, b"e" * 300)
    s["h2_cancel_head"] = bytes([0x11]) + headers(sid, ok_head, False) + pause() + frame(DATA, END_STREAM, sid, b"x")
    s["h2_cancel_data"] = bytes([0x19]) + headers(sid, ok_head, False) + frame(DATA, 0, sid, b"x") + pause() + frame(DATA, END_STREAM, sid, b"y")
    s["h2_head_method"] = bytes([0x03]) + headers(sid, status(200) + block([("content-length", "10")]))
    s["h2_big_post_early"] = bytes([0x07]) + headers(sid, status(413), True)
    s["h2_cut64"] = bytes([0x41]) + headers(sid, ok_head, False) + frame(DATA, PADDED, sid, b"\x03abc\0\0\0") + frame(
        DATA, END_STREAM, sid, b"def")
    s["h2_header_bomb"] = bytes([0x01]) + headers(sid, status(200) + block([("x-%d" % i, "v" * 90) for i in range(60)]))
    s["h2_truncated"] = bytes([0x01]) + headers(sid, ok_head, False)[:12]
    s["h2_two_streams"] = bytes([0x81]) + (headers(3, ok_head, False) + headers(sid, ok_head, False) +
                                           frame(DATA, 0, 3, b"three") + frame(DATA, END_STREAM, sid, b"one") + pause() +
                                           headers(3, block([("grpc-status", "0")])))
    s["h2_two_streams_one_reset"] = bytes([0x99]) + (headers(sid, ok_head, False) + headers(3, ok_head, False) +
                                                     frame(DATA, 0, sid, b"x") + rst(3, 2) + pause() + frame(DATA, END_STREAM, sid, b"y"))
    s["h2_not_reading_big_post"] = bytes([0x07]) + (toggle_reading() + window(0, 1 << 20) + window(sid, 1 << 20) + pause() +
                                                    toggle_reading() + headers(sid, status(200)))
    s["h2_ack_flood_not_reading"] = bytes([0x07]) + (toggle_reading() + window(0, 1 << 20) + window(sid, 1 << 20) + pause() +
                                                     b"".join(settings() for _ in range(2000)) + pause())
    start_another = frame(DRAIN, 0, 0)
    s["h2_goaway_then_request"] = bytes([0x01]) + (headers(sid, ok_head, False) + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)) +
                                                   start_another + frame(DATA, END_STREAM, sid, b"done"))
    s["h2_zero_streams_then_request"] = bytes([0x01]) + (settings((3, 0)) + start_another + headers(sid, ok_head))
    # The new request's HEADERS wait in nghttp2 behind backed-up output when
    # the GOAWAY arrives: never sent, so refused and retried elsewhere.
    s["h2_request_not_sent"] = bytes([0x07]) + (toggle_reading() + window(0, 1 << 20) + window(sid, 1 << 20) + pause() +
                                                start_another + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)) + pause() +
                                                toggle_reading() + pause() + headers(sid, status(200)))
    s["h2_four_streams"] = bytes([0x81]) + (start_another + start_another + b"".join(
        headers(i, ok_head, False) for i in (1, 3, 5, 7)) + b"".join(frame(DATA, END_STREAM, i, b"%d" % i) for i in (7, 5, 3, 1)))
    s["h2_other_stream"] = bytes([0x01]) + headers(3, ok_head) + frame(DATA, END_STREAM, 5, b"z") + headers(sid, ok_head)
    return s


# redis_reply inputs are RESP2 as Redis sends it (hiredis reads it); the
# shapes are cluster.lua's answers and what a broken or hostile peer sends.
def resp(v):
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, (bytes, str)):
        b = v.encode() if isinstance(v, str) else v
        return b"$%d\r\n" % len(b) + b + b"\r\n"
    return b"*%d\r\n" % len(v) + b"".join(resp(x) for x in v)


def redis_reply_seeds():
    s = {}
    counters = ["a", "3", "q", "2", "p\0default", "2", "p\0big", "1", "pq\0default", "2", "t\0alice", "2",
                "tq\0bob", "2", "s\0alice", "1"]
    s["info_two_replicas"] = resp([[["r1", 12, "d41d8c", ["default", "2", "big", "1"]], ["r2", 480, "d41d8c", []]],
                                   counters])
    s["info_idle"] = resp([[], []])
    s["info_int_values"] = resp([[["r1", -3, "", ["p", 7]]], ["a", 1, "t\0", -1]])
    s["info_non_numeric"] = resp([[["r1", "12", "d", ["default", "two"]]],
                                  ["a", "", "q", "-", "p\0x", "+5", "t\0y", "1e3", "s\0z", " 1"]])
    s["info_huge_numbers"] = resp([[["r1", "99999999999999999999", "d", []]],
                                   ["a", "9223372036854775807", "q", "-9223372036854775808", "t\0y", "9223372036854775808",
                                    "tq\0y", "-0", "pq\0y", "18446744073709551616"]])
    s["info_nul_in_id"] = resp([[["r\0x", 1, "d", []]], []])
    s["info_nul_in_pool"] = resp([[["r1", 1, "d", ["de\0fault", "1"]]], []])
    s["info_nul_in_counter"] = resp([[], ["t\0a\0b", "1", "\0", "2", "t\0a", "3", "t\0a", "4"]])
    s["info_odd_counters"] = resp([[], ["a", "1", "q"]])
    s["info_odd_pools"] = resp([[["r1", 1, "d", ["default"]]], []])
    s["info_short_replica"] = resp([[["r1", 1, "d"]], []])
    s["info_nil_digest"] = resp([[["r1", 1, None, []]], []])
    s["info_status_id"] = b"*2\r\n*1\r\n*4\r\n+r1\r\n:1\r\n+d\r\n*0\r\n*2\r\n+a\r\n+1\r\n"
    s["info_error_inside"] = b"*2\r\n*0\r\n*2\r\n$1\r\na\r\n-ERR no\r\n"
    s["budget_reply"] = resp([[10, 2], [0, 0]])
    s["admit_granted"] = b"*4\r\n:0\r\n:0\r\n:-1\r\n:-1\r\n"
    s["admit_queued"] = resp([1, 0, 2, -1])
    s["admit_rpm_wait"] = resp([2, 20000, 0, -1])
    s["release"] = resp([1])
    s["join"] = resp([7, 2])
    s["join_conflict"] = resp([-2, 1234])
    s["not_registered"] = resp([-1])
    s["ints_nine"] = resp(list(range(9)))
    s["ints_extremes"] = resp([9223372036854775807, -9223372036854775808, 0, -1])
    s["ints_overflow"] = b"*2\r\n:99999999999999999999\r\n:-99999999999999999999\r\n"
    s["ints_with_bulk"] = resp([0, "1"])
    s["ints_with_nil"] = resp([0, None])
    s["nested"] = resp([[1], 2])
    s["deep"] = b"*1\r\n" * 10 + b":1\r\n"
    s["error"] = b"-ERR obleth: unknown operation nope\r\n"
    s["noscript"] = b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    s["status"] = b"+OK\r\n"
    s["nil_bulk"] = b"$-1\r\n"
    s["nil_array"] = b"*-1\r\n"
    s["negative_counts"] = b"*-2\r\n$-5\r\n"
    s["huge_bulk"] = b"$9223372036854775807\r\nab\r\n"
    s["huge_bulk_2g"] = b"$2147483648\r\nab"
    s["huge_array"] = b"*2147483647\r\n:1\r\n"
    s["huge_array_over_int"] = b"*2147483648\r\n"
    s["bad_type"] = b"?3\r\n"
    s["bad_line"] = b":12a\r\n*x\r\n"
    s["several"] = resp([0, 0, -1, -1]) + resp([[], ["a", "1"]]) + b"+OK\r\n" + resp([1])
    s["truncated"] = resp([[["r1", 12, "d", []]], ["a", "1"]])[:-5]
    return s


def prom_seeds():
    m = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'

    def gauge(name, helptext, series):
        out = "# HELP %s %s\n# TYPE %s gauge\n" % (name, helptext, name)
        return out + "".join("%s{%s} %s\n" % (name, labels, v) for labels, v in series)

    def histogram(name, labels, buckets, total):
        out = "# HELP %s Histogram.\n# TYPE %s histogram\n" % (name, name)
        for le, n in buckets:
            out += "%s_bucket{%s,le=\"%s\"} %s\n" % (name, labels, le, n)
        out += "%s_count{%s} %s\n%s_sum{%s} %s\n" % (name, labels, buckets[-1][1], name, labels, total)
        return out

    s = {}
    s["vllm_v1"] = (
        "# HELP python_gc_objects_collected_total Objects collected during gc\n"
        "# TYPE python_gc_objects_collected_total counter\n"
        'python_gc_objects_collected_total{generation="0"} 12345.0\n'
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        "process_virtual_memory_bytes 1.4368825344e+011\n"
        + gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                [('engine="0",' + m, "3.0"), ('engine="1",' + m, "4.0")])
        + gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                [('engine="0",' + m, "0.0"), ('engine="1",' + m, "2.0")])
        + gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                [('engine="0",' + m, "0.25"), ('engine="1",' + m, "0.5")])
        + gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                [('max_lora="0",running_lora_adapters="",waiting_lora_adapters=""', "1.7187654e+09")])
        + "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        "vllm:prompt_tokens_total{engine=\"0\",%s} 120435.0\n" % m
        + histogram("vllm:time_to_first_token_seconds", 'engine="0",' + m,
                    [("0.001", "0.0"), ("0.02", "12.0"), ("0.1", "80.0"), ("+Inf", "97.0")], "4.85"))
    s["vllm_v0"] = (
        gauge("vllm:num_requests_running", "Number of requests currently running on GPU.",
              [('model_name="llama"', "5.0"), ('model_name="qwen"', "11.0")])
        + gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                [('model_name="llama"', "1.0"), ('model_name="m"', "6.0")])
        + gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                [('model_name="llama"', "0.9712"), ('model_name="m"', "0.31")]))
    q = 'model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"'
    s["sglang"] = (
        gauge("sglang:num_running_reqs", "The number of running requests.", [(q, "17.0")])
        + gauge("sglang:token_usage", "The token usage.", [(q, "0.73")])
        + gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", [(q, "3.0")])
        + gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", [(q, "NaN")])
        + histogram("sglang:e2e_request_latency_seconds", 'model_name="m"', [("0.1", "0.0"), ("+Inf", "1021.0")],
                    "2154.6"))[:-1]  # no final LF
    s["values"] = "".join("a %s\n" % v for v in [
        "1", "-1", "+1", "1.", ".5", "1e3", "1E-3", "1.5e+2", "00012.500", "-0", "NaN", "+Inf", "-Inf", "inf",
        "Infinity", "4.9e-324", "1.7976931348623157e308", "123456789012345678901234567890", "1e-400"])
    s["value_first"] = "0.30000000000000004\n"
    s["value_inf_first"] = "-Infinity\n"
    s["timestamps"] = "a 1 1712345678901\nb{} 2 0\nx_bucket{le=\"+Inf\"} 3 9223372036854775807\n"
    s["blanks"] = "\n  \n\t\n  a  { b = \"1\" ,\tc=\"2\", }  3  \n\tb{}4\t 1712345678901 \n"
    s["comments"] = ("#\n# \n#HELP not metadata \\x\n# plain \\x\n# HELPX a b\n# HELP a\n"
                     "# HELP a line\\nbreak \\\\ caf\u00e9\n#\tTYPE\ta\tgauge\t\n# TYPE b counter\n"
                     "# TYPE c histogram\n# TYPE d summary\n# TYPE e untyped\n")
    s["escapes"] = 'a{p="C:\\\\models\\\"x\\"\\nnext",q="}{,=",m="\u6a21\u578b \U0001f999"} 5\n'
    s["names"] = "_a 1\n:b 2\na_b:c_9 3\n__name__ 5\nx{__reserved=\"1\",_u=\"2\"} 6\n"
    s["labels_64"] = "a{" + "".join('l%d="%d",' % (i, i) for i in range(64)) + "} 1\n"
    s["labels_65"] = "a{" + "".join('l%d="%d",' % (i, i) for i in range(65)) + "} 1\n"
    s["sum_overflow"] = 'a{x="1"} 1.7e308\na{x="2"} 1.7e308\nb 1\n'
    s["bad_crlf"] = "a 1\r\nb 2\r\n"
    s["bad_escape"] = 'a{b="\\t"} 1\n'
    s["bad_unterminated"] = 'a 1\na{b="c} 1\n'
    s["bad_duplicate_label"] = 'a{b="1",c="2",b="3"} 1\n'
    s["bad_missing_comma"] = 'a{b="c" d="e"} 1\n'
    s["bad_no_value"] = 'a{b="c"}\n'
    s["bad_timestamp"] = "a 1 123 x\n"
    s["bad_name"] = "vllm-x 1\n"
    s["bad_type"] = "# TYPE a gauge counter\n"
    s["bad_help_escape"] = "# HELP a bad \\t\n"
    s["bad_value"] = "a 0x1p-2\nb 1_000\n"
    seeds = {k: v.encode("utf-8") for k, v in s.items()}
    seeds["bad_utf8"] = b'a{b="\xc0\xaf"} 1\n'
    seeds["bad_nul"] = b"a 1\n\x00\n"
    return seeds


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, "seed_" + name), "wb") as f:
            f.write(data)
    print("%s: %d seeds" % (target, len(seeds)))


if __name__ == "__main__":
    write("h2_server", h2_server_seeds())
    write("upstream_response", upstream_seeds())
    write("redis_reply", redis_reply_seeds())
    write("prom", prom_seeds())
