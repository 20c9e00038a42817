"""One function shows URLs without their secrets (issue #23, finding 9): the ingest source's errors,
`edgesight detect`, the Panorama SDK's stream_uri and the console all use it."""

from __future__ import annotations

from common.urls import redact, redact_url


def test_a_password_and_query_tokens_are_hidden_stream_selectors_are_not() -> None:
    url = "rtsp://admin:p%40ss@10.0.0.5:554/Streaming/Channels/101?channel=1&subtype=0&token=SECRET&auth=xyz"
    shown = redact_url(url)
    assert shown == "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101?channel=1&subtype=0&token=***&auth=***"
    assert redact_url("https://h.example/x?X-Amz-Signature=abc&X-Amz-Credential=def#access_token=ghi") == (
        "https://h.example/x?X-Amz-Signature=***&X-Amz-Credential=***#***"
    )
    assert redact_url("rtsp://10.0.0.5/stream") == "rtsp://10.0.0.5/stream"
    assert redact_url("rtsp://viewer@10.0.0.5/stream") == "rtsp://viewer@10.0.0.5/stream"
    assert redact_url("http://[::1/x") == "***"  # unparseable: nothing of it shown


def test_messages_have_every_url_and_every_given_secret_hidden() -> None:
    message = "401 Unauthorized for rtsp://admin:hunter2@cam/x?token=T0K3N; retrying rtsp://cam/y?key=K3Y"
    assert redact(message) == "401 Unauthorized for rtsp://admin:***@cam/x?token=***; retrying rtsp://cam/y?key=***"
    assert redact("FFmpeg said: bad password 'hunter2' (hunter%32)", ["hunter2"]) == (
        "FFmpeg said: bad password '***' (hunter%32)"
    )
    assert redact("user p%40ss and p@ss", ["p%40ss"]) == "user *** and ***"
