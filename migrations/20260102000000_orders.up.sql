-- Orders placed by customers; amounts in cents.
create type order_status as enum ('pending', 'paid', 'shipped', 'cancelled');
create table orders (
    id bigint generated always as identity primary key,
    customer_id bigint not null references customers (id) on delete cascade,
    status order_status not null default 'pending',
    amount_cents bigint not null check (amount_cents >= 0),
    placed_at timestamptz not null default now()
);
create index orders_customer_idx on orders (customer_id);
