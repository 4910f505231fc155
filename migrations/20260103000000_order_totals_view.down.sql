drop view customer_totals;
