-- The cluster profile's database (docker-compose.yml): its two ledger serve replicas share it, apart
-- from the single-node ledger's, so the two stacks' event streams never meet in one ledger.
CREATE DATABASE ledger_cluster OWNER ledger;
