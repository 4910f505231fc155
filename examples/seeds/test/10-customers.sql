insert into customers (email, name) values ('test@example.com', 'Test User');
