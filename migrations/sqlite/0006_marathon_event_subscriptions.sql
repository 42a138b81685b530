-- Marathon's HTTP callback event subscriptions (/v2/eventSubscriptions): each URL receives every event.
CREATE TABLE marathon_event_subscriptions (
    callback_url TEXT PRIMARY KEY,
    created_at   BIGINT NOT NULL    -- milliseconds since the Unix epoch
);
