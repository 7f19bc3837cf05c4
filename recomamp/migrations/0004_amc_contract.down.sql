DROP TABLE amc_quota_blocks;
DROP TABLE amc_submissions;
ALTER TABLE amc_instances DROP COLUMN api_endpoint;
