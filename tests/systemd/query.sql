SELECT campaign_id, SUM(impressions) AS impressions FROM dsp_impressions GROUP BY campaign_id
