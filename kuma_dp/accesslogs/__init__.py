"""The Tcp access-log backend's agent side: read what Envoy writes into the FIFO, send it to the
collectors (`streamer.py` reads, `sender.py` sends, one sender per collector address)."""

from kuma_dp.accesslogs.streamer import AccessLogStreamer, start_access_log_streamer

__all__ = ["AccessLogStreamer", "start_access_log_streamer"]
