"""The server against hand-made frames: what Go's ttrpc answers, and what it survives."""

from __future__ import annotations

import asyncio

from raw_wire import frame, open_raw, read_response, request
from scripted_health import HEALTH

from pykata.protocols import health_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import Code
from pykata.ttrpc.framing import MAX_PAYLOAD, FrameType

REQ = FrameType.REQUEST
CHECK = request("grpc.Health", "Check", health_pb2.CheckRequest().SerializeToString())


async def test_success_omits_status_like_go(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, CHECK))
    stream_id, response = await read_response(reader)
    assert stream_id == 1
    assert not response.HasField("status")
    assert health_pb2.HealthCheckResponse.FromString(response.payload).status == 1
    writer.close()


async def test_request_flags_are_ignored_like_go(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, CHECK, flags=0xFF))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.HasField("status")) == (1, False)
    writer.close()


async def test_even_stream_ids_are_refused(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    for stream_id in (0, 2):
        writer.write(frame(stream_id, REQ, CHECK))
        got_id, response = await read_response(reader)
        assert got_id == stream_id
        assert response.status.code == Code.INVALID_ARGUMENT
        assert "odd" in response.status.message
    writer.write(frame(3, REQ, CHECK))
    assert (await read_response(reader))[0] == 3
    writer.close()


async def test_oversized_frame_gets_resource_exhausted_and_serving_goes_on(
    server_address: str,
) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(5, REQ, b"\x00" * (MAX_PAYLOAD + 1)) + frame(7, REQ, CHECK))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.status.code) == (5, Code.RESOURCE_EXHAUSTED)
    stream_id, response = await read_response(reader)
    assert (stream_id, response.HasField("status")) == (7, False)
    writer.close()


async def test_undecodable_request_is_invalid_argument(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, b"\xff\xff\xff"))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.status.code) == (1, Code.INVALID_ARGUMENT)
    assert response.status.message.startswith("unmarshal request error:")
    writer.close()


async def test_undecodable_payload_is_internal_like_go(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, request("grpc.Health", "Check", b"\xff")))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.status.code) == (1, Code.INTERNAL)
    assert response.status.message.startswith("ttrpc: error unmarshalling payload: ")
    writer.close()


async def test_unknown_service_and_method_messages_match_go(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, request("grpc.Nope", "Check")))
    writer.write(frame(3, REQ, request("grpc.Health", "Nope")))
    answers = dict([await read_response(reader), await read_response(reader)])
    assert (answers[1].status.code, answers[1].status.message) == (12, "service grpc.Nope")
    assert (answers[3].status.code, answers[3].status.message) == (12, "method Nope")
    writer.close()


async def test_responses_come_back_in_completion_order(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    slow = request(
        "grpc.Health", "Check", health_pb2.CheckRequest(service="sleep:0.3").SerializeToString()
    )
    writer.write(frame(1, REQ, slow) + frame(3, REQ, CHECK))
    assert (await read_response(reader))[0] == 3
    assert (await read_response(reader))[0] == 1
    writer.close()


async def test_stream_id_already_in_flight_is_refused(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    slow = request(
        "grpc.Health", "Check", health_pb2.CheckRequest(service="sleep:0.3").SerializeToString()
    )
    writer.write(frame(1, REQ, slow) + frame(1, REQ, CHECK))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.status.code) == (1, Code.INVALID_ARGUMENT)
    stream_id, response = await read_response(reader)
    assert (stream_id, response.HasField("status")) == (1, False)
    writer.close()


async def test_response_and_data_frames_are_ignored(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    writer.write(
        frame(1, FrameType.RESPONSE, b"junk") + frame(1, FrameType.DATA, b"") + frame(3, REQ, CHECK)
    )
    assert (await read_response(reader))[0] == 3
    writer.close()


async def test_unknown_frame_type_closes_only_that_connection(server_address: str) -> None:
    async with await Client.connect(server_address) as bystander:
        reader, writer = await open_raw(server_address)
        writer.write(frame(1, 0x7F, b"garbage"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert (await bystander.stub(HEALTH).Check(health_pb2.CheckRequest())).status == 1


async def test_peer_closing_mid_frame_leaves_the_server_serving(server_address: str) -> None:
    _, writer = await open_raw(server_address)
    writer.write(frame(1, REQ, CHECK)[:-3])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    async with await Client.connect(server_address) as client:
        assert (await client.stub(HEALTH).Check(health_pb2.CheckRequest())).status == 1
