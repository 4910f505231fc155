-- Customers of the example application.
create table customers (
    id bigint generated always as identity primary key,
    email text not null unique check (email like '%@%'),
    name text not null,
    created_at timestamptz not null default now()
);
