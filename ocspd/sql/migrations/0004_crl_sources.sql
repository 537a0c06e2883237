-- ocspd schema 4: the CRLs in force of issuers whose status comes from their CA's CRLs (issue 15).
--
-- One row per issuer. The replicas share it: each round, one replica claims
-- the row (claimed_until: a lease, so a replica that dies mid-fetch does not
-- hold it), fetches and checks the CRLs, merges them into ocspd_certificates
-- (whose triggers notify every replica of each serial that changed) and
-- records here what is now in force; the others read the row for the
-- nextUpdate that bounds their answers. The replica that applied last
-- (applier) keeps the CRLs' entries in memory, so it claims the next rounds
-- first and merges only what changed; another takes over when it is late.
-- validators: per location, what makes the next fetch conditional (ETag,
-- Last-Modified, a file's stat), for whichever replica claims. CRL numbers
-- are up to 20 octets.
CREATE TABLE ocspd_crl_sources (
    issuer_id         text        PRIMARY KEY,
    base_number       numeric,
    base_this_update  timestamptz,
    base_next_update  timestamptz,
    base_entries      bigint,
    base_source       text,
    delta_number      numeric,
    delta_this_update timestamptz,
    delta_next_update timestamptz,
    delta_entries     bigint,
    delta_source      text,
    last_error        text,
    applied_at        timestamptz,
    fetched_at        timestamptz,
    validators        jsonb       NOT NULL DEFAULT '{}',
    applier           text,
    next_fetch_at     timestamptz NOT NULL DEFAULT 'epoch',
    claimed_until     timestamptz NOT NULL DEFAULT 'epoch',
    CONSTRAINT ocspd_crl_delta_has_base CHECK (delta_number IS NULL OR base_number IS NOT NULL)
);

-- Every merge of a CRL asks which holds the table has (to release those the
-- CRLs no longer list): without this, a scan of the issuer's rows.
CREATE INDEX ocspd_certificates_holds ON ocspd_certificates (issuer_id) WHERE reason = 'certificateHold';
