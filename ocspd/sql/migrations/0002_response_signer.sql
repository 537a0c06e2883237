-- ocspd schema 2: which key signed each stored response.
--
-- After a responder key rollover (SIGHUP with a new key), a replica serves
-- only stored responses made with its current key; rows of the old key are
-- re-signed on their next miss or refresh. Existing rows get '' and are
-- re-signed the same way.
ALTER TABLE ocspd_responses ADD COLUMN signer text NOT NULL DEFAULT '';
