DROP TABLE replicas;
DROP TABLE notifications;
