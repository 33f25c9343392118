-- The items resource (SPEC section 6). Ids are UUIDv7 assigned by the application, so ordering by id is
-- creation order and serves keyset pagination without a second index.
CREATE TABLE items (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    quantity   bigint      NOT NULL CHECK (quantity >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
