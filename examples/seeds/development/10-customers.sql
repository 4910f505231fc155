insert into customers (email, name) values
    ('ada@example.com', 'Ada Lovelace'),
    ('grace@example.com', 'Grace Hopper'),
    ('edsger@example.com', 'Edsger Dijkstra');
-- A few thousand synthetic customers, so that backups have something to chew on.
insert into customers (email, name)
select format('user%s@example.com', g), format('User %s', g) from generate_series(1, 5000) g;
