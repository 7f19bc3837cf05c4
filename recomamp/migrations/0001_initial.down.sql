DROP TABLE IF EXISTS schedule_runs;
DROP TABLE IF EXISTS workflow_schedules;
DROP TABLE IF EXISTS snowflake_configurations;
DROP TABLE IF EXISTS amc_instances;
DROP TABLE IF EXISTS users;
