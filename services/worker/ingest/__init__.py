"""Device data into the worker: MQTT messages and the mapper's HTTP push become readings (``messages``), readings
become rows per device (``assemble``), rows are scored as the device's stream and feed the alarms (``pipeline``).
``mqtt`` holds the broker connection (subscriptions in, alarm events out); ``http_push`` the push route's parsing."""
