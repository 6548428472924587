"""Front ends: translate a protocol into Requests and Outcomes back; no policy here."""
