BEGIN;

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text,
    card_number text,
    ssn         text,
    created_at  timestamptz NOT NULL
);
COMMENT ON TABLE customers IS 'Demo customers with FAKE personal data (test card numbers, never-issued SSNs, 555-01xx phones).';
COMMENT ON COLUMN customers.card_number IS 'PAN: published test card numbers that pass Luhn.';
COMMENT ON COLUMN customers.ssn IS 'US SSN: 9xx area or known void numbers, never issued.';

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    product     text NOT NULL,
    amount      numeric(10,2) NOT NULL CHECK (amount >= 0),
    status      text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'refunded', 'cancelled')),
    ordered_at  timestamptz NOT NULL
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
COMMENT ON TABLE orders IS 'Demo orders placed by the demo customers.';

INSERT INTO customers (full_name, email, phone, card_number, ssn, created_at) VALUES
    ('Alice Johnson',      'alice.johnson@example.com',   '+1-202-555-0101',  '4111111111111111', '900-12-3456', '2024-01-03 09:15:00+00'),
    ('Bruno Díaz',         'bruno.diaz@example.org',      '(305) 555-0102',   '5555555555554444', '078-05-1120', '2024-01-05 14:02:00+00'),
    ('Chloé Martin',       'chloe.martin@example.net',    '+1 415 555 0103',  '378282246310005',  '901-23-4567', '2024-01-08 11:47:00+00'),
    ('Dmitri Ivanov',      'd.ivanov@example.com',        '212.555.0104',     '6011111111111117', '902-34-5678', '2024-01-12 16:30:00+00'),
    ('Eun-ji Park',        'eunji.park@example.org',      '+1-646-555-0105',  '4012888888881881', '219-09-9999', '2024-01-15 08:05:00+00'),
    ('Fatima Al-Sayed',    'fatima.alsayed@example.net',  '+44 20 7946 0106', '5105105105105100', '903-45-6789', '2024-01-19 19:22:00+00'),
    ('George O''Brien',    'george.obrien@example.com',   '(617) 555-0107',   '371449635398431',  '904-56-7890', '2024-01-23 10:10:00+00'),
    ('Hana Nováková',      'hana.novakova@example.org',   NULL,               '3530111333300000', '905-67-8901', '2024-02-01 13:45:00+00'),
    ('Ian McAllister',     'ian.mcallister@example.net',  '+1-312-555-0109',  '4242424242424242', '906-78-9012', '2024-02-04 07:55:00+00'),
    ('Jasmine Patel',      'jasmine.patel@example.com',   '+1 (408) 555-0110','5200828282828210', NULL,          '2024-02-09 17:18:00+00'),
    ('Kwame Mensah',       'kwame.mensah@example.org',    '+1-713-555-0111',  '6011000990139424', '907-89-0123', '2024-02-14 12:00:00+00'),
    ('Lucía Fernández',    'lucia.fernandez@example.net', '(206) 555-0112',   '3566002020360505', '908-90-1234', '2024-02-20 09:33:00+00'),
    ('Mohammed Rahman',    'm.rahman@example.com',        '+1-480-555-0113',  '4000056655665556', '909-01-2345', '2024-02-27 15:41:00+00'),
    ('Nora Lindqvist',     'nora.lindqvist@example.org',  '+1 503 555 0114',  '2223003122003222', '910-11-2233', '2024-03-04 10:27:00+00'),
    ('Oliver Smith',       'oliver.smith@example.net',    '303-555-0115',     '30569309025904',   '911-22-3344', '2024-03-11 18:09:00+00'),
    ('Priya Nair',         'priya.nair@example.com',      '+1-919-555-0116',  '4222222222222',    '912-33-4455', '2024-03-18 08:48:00+00'),
    ('Quentin Dubois',     'quentin.dubois@example.org',  '(702) 555-0117',   '6200000000000005', '913-44-5566', '2024-03-25 14:14:00+00'),
    ('Rosa González',      'rosa.gonzalez@example.net',   '+1-305-555-0118',  '4000002500003155', '914-55-6677', '2024-04-02 11:36:00+00'),
    ('Sakura Tanaka',      'sakura.tanaka@example.com',   '+1 808 555 0119',  '5454545454545454', '915-66-7788', '2024-04-09 16:52:00+00'),
    ('Tobias Wagner',      'tobias.wagner@example.org',   '(612) 555-0120',   '4917610000000000', '916-77-8899', '2024-04-16 09:03:00+00');

INSERT INTO orders (customer_id, product, amount, status, ordered_at) VALUES
    ( 1, 'Standing desk',               549.00, 'delivered', '2024-01-04 10:12:00+00'),
    ( 1, 'Desk lamp',                    39.90, 'delivered', '2024-01-04 10:14:00+00'),
    ( 2, 'Mechanical keyboard',         129.99, 'delivered', '2024-01-06 09:30:00+00'),
    ( 3, 'Noise-cancelling headphones', 299.00, 'refunded',  '2024-01-09 12:01:00+00'),
    ( 3, 'USB-C hub',                    45.50, 'delivered', '2024-01-20 08:44:00+00'),
    ( 4, '27" monitor',                 379.00, 'delivered', '2024-01-13 17:20:00+00'),
    ( 5, 'Ergonomic chair',             689.00, 'shipped',   '2024-01-16 11:11:00+00'),
    ( 5, 'Footrest',                     59.00, 'shipped',   '2024-01-16 11:12:00+00'),
    ( 6, 'Webcam',                       89.99, 'delivered', '2024-01-21 20:05:00+00'),
    ( 7, 'Laptop stand',                 49.00, 'cancelled', '2024-01-24 09:00:00+00'),
    ( 7, 'Laptop stand',                 49.00, 'delivered', '2024-01-24 09:07:00+00'),
    ( 8, 'Coffee subscription (3 mo)',   54.00, 'paid',      '2024-02-02 07:30:00+00'),
    ( 9, 'Mechanical keyboard',         129.99, 'delivered', '2024-02-05 13:13:00+00'),
    ( 9, 'Wrist rest',                   24.50, 'delivered', '2024-02-05 13:15:00+00'),
    (10, 'Standing desk',               549.00, 'shipped',   '2024-02-10 10:45:00+00'),
    (11, 'Noise-cancelling headphones', 299.00, 'delivered', '2024-02-15 16:20:00+00'),
    (11, 'Cable organizer',              12.99, 'delivered', '2024-02-15 16:21:00+00'),
    (12, 'Ergonomic chair',             689.00, 'paid',      '2024-02-21 10:02:00+00'),
    (13, 'USB-C hub',                    45.50, 'delivered', '2024-02-28 18:30:00+00'),
    (13, 'Portable SSD 1 TB',           109.00, 'delivered', '2024-03-01 09:09:00+00'),
    (14, 'Desk lamp',                    39.90, 'refunded',  '2024-03-05 12:40:00+00'),
    (15, '27" monitor',                 379.00, 'shipped',   '2024-03-12 15:15:00+00'),
    (15, 'Monitor arm',                 119.00, 'shipped',   '2024-03-12 15:16:00+00'),
    (16, 'Webcam',                       89.99, 'pending',   '2024-03-19 08:58:00+00'),
    (17, 'Mechanical keyboard',         129.99, 'paid',      '2024-03-26 11:25:00+00'),
    (18, 'Laptop stand',                 49.00, 'delivered', '2024-04-03 14:50:00+00'),
    (18, 'Noise-cancelling headphones', 299.00, 'delivered', '2024-04-03 14:52:00+00'),
    (19, 'Standing desk',               549.00, 'pending',   '2024-04-10 17:35:00+00'),
    (20, 'Coffee subscription (12 mo)', 199.00, 'paid',      '2024-04-17 09:20:00+00'),
    (20, 'Desk lamp',                    39.90, 'paid',      '2024-04-17 09:21:00+00'),
    ( 2, 'Wrist rest',                   24.50, 'delivered', '2024-04-18 10:00:00+00'),
    ( 4, 'Portable SSD 1 TB',           109.00, 'cancelled', '2024-04-20 13:31:00+00'),
    ( 6, 'Ergonomic chair',             689.00, 'pending',   '2024-04-22 16:16:00+00'),
    ( 8, 'USB-C hub',                    45.50, 'shipped',   '2024-04-23 08:08:00+00'),
    (10, 'Monitor arm',                 119.00, 'paid',      '2024-04-24 19:47:00+00'),
    (12, 'Cable organizer',              12.99, 'pending',   '2024-04-25 07:07:00+00'),
    (14, 'Webcam',                       89.99, 'paid',      '2024-04-26 12:12:00+00'),
    (16, 'Footrest',                     59.00, 'pending',   '2024-04-27 15:55:00+00'),
    (17, 'Gift card',                   100.00, 'delivered', '2024-04-28 11:00:00+00'),
    (19, 'Gift card',                    50.00, 'refunded',  '2024-04-29 18:18:00+00');

COMMIT;
