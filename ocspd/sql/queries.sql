-- Named queries of ocspd. Each starts with a line "-- name: <name>"; the
-- store parses this file once. Parameters are psycopg2 %(name)s placeholders.

-- name: fetch
-- Status and stored response of several CertIDs (arrays of equal length) in
-- one round trip, one row per CertID in input order (k.n). A stored row
-- signed from another status version, or by another key, is not returned.
SELECT k.n, c.status, c.revoked_at, c.reason, c.version,
       r.der, r.status AS r_status,
       -- epoch numbers: cheaper for the client than parsing timestamps
       extract(epoch FROM r.this_update)::float8, extract(epoch FROM r.next_update)::float8
FROM unnest(%(issuers)s::text[], %(serials)s::text[], %(hash_algs)s::text[], %(signers)s::text[])
     WITH ORDINALITY AS k(issuer_id, serial, hash_alg, signer, n)
LEFT JOIN ocspd_certificates c
       ON c.issuer_id = k.issuer_id AND c.serial = k.serial
LEFT JOIN ocspd_responses r
       ON r.issuer_id = k.issuer_id AND r.serial = k.serial AND r.hash_alg = k.hash_alg
      AND r.cert_version = c.version AND r.signer = k.signer
ORDER BY k.n;

-- name: begin_read_committed
-- Opens the fenced read (replay_lsn, then fetch, then commit, in one round
-- trip): at READ COMMITTED whatever the server's default, so that the
-- fetch takes its own snapshot, after the position was read.
BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY;

-- name: replay_lsn
-- How far a hot standby has replayed the primary's WAL, as a byte position
-- (NULL on a server not in recovery: it is the primary, always current).
-- Read just before "fetch", so that the fetch's snapshot, taken after,
-- sees every change up to this position: the request path's reads on
-- [database] read_dsn are fenced by it (ocspd/store/fence.py).
SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END;

-- name: commit
COMMIT;

-- name: replay_position
-- The read target's check (ocspd/store/readset.py): its replay position as
-- "replay_lsn" gives it, and the age in seconds of the last commit it
-- replayed (NULL before the first; the primary's commit time against this
-- server's clock).
SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END,
       EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8;

-- name: current_wal_lsn
-- The primary's WAL insert position, read by the LISTEN connection after
-- notifications: a commit that has been notified ends at or before it
-- (the insert position, not the write one, which may still lag behind a
-- commit made with synchronous_commit = off).
SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint;

-- name: store_responses
-- Conditional write-back of signed responses (arrays of equal length; the
-- DERs travel as one bytea, cut by offset and length: one parameter to
-- escape instead of one per response): a row is written only while its
-- certificate still has the status version it was signed from. FOR SHARE
-- makes a concurrent status change wait for us, or us for it; either way
-- the trigger's DELETE runs after any row we write.
INSERT INTO ocspd_responses AS r
    (issuer_id, serial, hash_alg, der, status, this_update, next_update, refresh_at, cert_version, signer)
SELECT c.issuer_id, c.serial, b.hash_alg, substring(%(ders)s::bytea FROM b.der_at FOR b.der_len), b.status,
       to_timestamp(b.this_update), to_timestamp(b.next_update), to_timestamp(b.refresh_at), c.version, %(signer)s
FROM unnest(%(serials)s::text[], %(hash_algs)s::text[], %(der_ats)s::int[], %(der_lens)s::int[],
            %(statuses)s::text[], %(this_updates)s::float8[], %(next_updates)s::float8[],
            %(refresh_ats)s::float8[], %(versions)s::bigint[])
     AS b(serial, hash_alg, der_at, der_len, status, this_update, next_update, refresh_at, version)
JOIN ocspd_certificates c
  ON c.issuer_id = %(issuer)s AND c.serial = b.serial AND c.version = b.version
FOR SHARE OF c
ON CONFLICT (issuer_id, serial, hash_alg) DO UPDATE
    SET der = EXCLUDED.der, status = EXCLUDED.status, this_update = EXCLUDED.this_update,
        next_update = EXCLUDED.next_update, refresh_at = EXCLUDED.refresh_at, cert_version = EXCLUDED.cert_version,
        signer = EXCLUDED.signer
    WHERE r.cert_version < EXCLUDED.cert_version
       OR (r.cert_version = EXCLUDED.cert_version
           AND (r.this_update <= EXCLUDED.this_update OR r.signer <> EXCLUDED.signer))
RETURNING 1;

-- name: claim_refresh
-- Rows due for re-signing, locked so that other replicas skip them.
SELECT r.issuer_id, r.serial, r.hash_alg, c.status, c.revoked_at, c.reason, c.version
FROM ocspd_responses r
JOIN ocspd_certificates c ON c.issuer_id = r.issuer_id AND c.serial = r.serial
WHERE r.refresh_at <= now() + %(lead)s::interval
  AND r.issuer_id = ANY(%(issuers)s::text[])
ORDER BY r.refresh_at
LIMIT %(limit)s
FOR UPDATE OF r SKIP LOCKED;

-- name: presign_batch
-- Certificates of one issuer without a fresh stored response for hash_alg,
-- in serial order after a cursor (keyset pagination, no OFFSET scans).
-- The stored response is probed per certificate by its primary key (a
-- LATERAL subquery with LIMIT 1 is never turned into a join): the table that
-- presign itself fills has no statistics yet, and with NOT EXISTS the planner
-- then chose an anti-join reading every stored response of the hash for each
-- batch (presign of 100k certificates fell to ~400/s until autovacuum's
-- analyze; bench/README.md, issue 14).
SELECT c.serial, c.status, c.revoked_at, c.reason, c.version
FROM ocspd_certificates c
LEFT JOIN LATERAL (
    SELECT true AS fresh FROM ocspd_responses r
    WHERE r.issuer_id = c.issuer_id AND r.serial = c.serial AND r.hash_alg = %(hash_alg)s
      AND r.cert_version = c.version AND r.signer = %(signer)s AND r.refresh_at > now()
    LIMIT 1) stored ON true
WHERE c.issuer_id = %(issuer)s AND c.serial > %(after)s AND stored.fresh IS NULL
ORDER BY c.serial
LIMIT %(limit)s;

-- name: schema_version
-- The highest migration applied (readiness and start-up compare it with the
-- highest this code ships); no table at all is UndefinedTable.
SELECT coalesce(max(version), 0) FROM ocspd_migrations;

-- name: count_certificates
SELECT count(*) FROM ocspd_certificates WHERE issuer_id = %(issuer)s;

-- name: analyze_certificates
-- After a bulk import: fresh planner statistics at once, so that the scans
-- of the table (presign's, refresh's) are planned for its real size, not for
-- the empty table autovacuum last saw. Needs the table's owner (the role
-- that ran db migrate); anyone else gets a WARNING, not an error.
ANALYZE ocspd_certificates;

-- name: import_certificates
-- Merge issued certificates into the table (cert import, cert add): never a
-- downgrade. Per serial, by ocspd_merge (sql/migrations/0003): unlisted ->
-- inserted as given; good + revoked -> revoked; a hold + another revocation
-- -> revoked; anything else keeps what the table says (a revocation is never
-- undone by an import). not_after is filled in when given. Status columns are
-- written only when they change, so re-importing the same data bumps no
-- versions. The serials are distinct (the caller merges duplicates). Returns
-- (outcome, count): new, revoked, kept (the table's revocation over the
-- file's "good"), conflict (the table's revocation over another one in the
-- file), unchanged.
WITH b AS (
    SELECT b.serial, b.status, b.revoked_at, NULLIF(b.reason, 'unspecified') AS reason, b.not_after
    FROM unnest(%(serials)s::text[], %(statuses)s::text[], %(revoked_ats)s::timestamptz[], %(reasons)s::text[],
                %(not_afters)s::timestamptz[]) AS b(serial, status, revoked_at, reason, not_after)
), written AS (
    INSERT INTO ocspd_certificates AS c (issuer_id, serial, status, revoked_at, reason, not_after)
    SELECT %(issuer)s, b.serial, b.status, b.revoked_at, b.reason, b.not_after FROM b
    ON CONFLICT (issuer_id, serial) DO UPDATE
        SET status = CASE WHEN ocspd_merge(c.status, c.reason, c.revoked_at, EXCLUDED.status, EXCLUDED.reason,
                                           EXCLUDED.revoked_at) = 'apply' THEN EXCLUDED.status ELSE c.status END,
            revoked_at = CASE WHEN ocspd_merge(c.status, c.reason, c.revoked_at, EXCLUDED.status, EXCLUDED.reason,
                                               EXCLUDED.revoked_at) = 'apply' THEN EXCLUDED.revoked_at ELSE c.revoked_at END,
            reason = CASE WHEN ocspd_merge(c.status, c.reason, c.revoked_at, EXCLUDED.status, EXCLUDED.reason,
                                           EXCLUDED.revoked_at) = 'apply' THEN EXCLUDED.reason ELSE c.reason END,
            not_after = COALESCE(EXCLUDED.not_after, c.not_after)
        WHERE ocspd_merge(c.status, c.reason, c.revoked_at, EXCLUDED.status, EXCLUDED.reason, EXCLUDED.revoked_at) = 'apply'
           OR (EXCLUDED.not_after IS NOT NULL AND EXCLUDED.not_after IS DISTINCT FROM c.not_after)
    RETURNING c.serial, c.xmax = 0 AS inserted
), listed AS (
    -- The serials the table had (all sub-statements read the table as it was
    -- before this one): one primary-key probe each, and only for those not
    -- just inserted, so a fresh import probes nothing. (LIMIT keeps the
    -- planner from scanning all the issuer's rows instead.)
    SELECT b.status AS new_status,
           ocspd_merge(c.status, c.reason, c.revoked_at, b.status, b.reason, b.revoked_at) AS merge
    FROM b
    LEFT JOIN written w ON w.serial = b.serial AND w.inserted
    CROSS JOIN LATERAL (
        SELECT c.status, c.reason, c.revoked_at FROM ocspd_certificates c
        WHERE c.issuer_id = %(issuer)s AND c.serial = b.serial LIMIT 1
    ) AS c
    WHERE w.serial IS NULL
)
SELECT 'new', count(*) FROM written WHERE inserted
UNION ALL
SELECT CASE
           WHEN merge = 'apply' THEN 'revoked'
           WHEN merge = 'keep' AND new_status = 'good' THEN 'kept'
           WHEN merge = 'keep' THEN 'conflict'
           ELSE 'unchanged'
       END, count(*)
FROM listed
GROUP BY 1;

-- name: revoke
-- Idempotent: the same revocation again changes nothing and returns the
-- current version; another one is refused (23R01) unless amend.
SELECT ocspd_revoke(%(issuer)s, %(serial)s, %(reason)s, %(at)s, %(amend)s);

-- name: unhold
SELECT ocspd_unhold(%(issuer)s, %(serial)s);

-- name: status
SELECT c.status, c.revoked_at, c.reason, c.not_after, c.version, c.updated_at,
       (SELECT count(*) FROM ocspd_responses r
        WHERE r.issuer_id = c.issuer_id AND r.serial = c.serial AND r.cert_version = c.version) AS stored_responses
FROM ocspd_certificates c
WHERE c.issuer_id = %(issuer)s AND c.serial = %(serial)s;

-- name: ensure_crl_row
INSERT INTO ocspd_crl_sources (issuer_id) VALUES (%(issuer)s) ON CONFLICT (issuer_id) DO NOTHING;

-- name: claim_crl
-- One replica a round fetches an issuer's CRLs: the one whose UPDATE finds
-- the row due and unclaimed (row lock: concurrent claims wait, then see it
-- claimed), the last applier first (it holds the entries: it merges only what
-- changed); anyone once the round is ``grace`` seconds overdue. ``force``:
-- due now, and the applier stays (ocspd crl sync).
UPDATE ocspd_crl_sources
SET claimed_until = now() + make_interval(secs => %(lease)s),
    applier = CASE WHEN %(force)s THEN applier ELSE %(me)s END
WHERE issuer_id = %(issuer)s AND claimed_until < now()
  AND (%(force)s OR (next_fetch_at <= now()
                     AND (applier IS NULL OR applier = %(me)s
                          OR next_fetch_at <= now() - make_interval(secs => %(grace)s))))
RETURNING issuer_id;

-- name: release_crl
-- A replica stopping in the middle of its round hands it back: claimable again at
-- once (by the others once it is overdue), not only when the lease runs out.
UPDATE ocspd_crl_sources SET claimed_until = 'epoch'
WHERE issuer_id = %(issuer)s AND applier = %(me)s AND claimed_until > now();

-- name: crl_in_force
SELECT base_number, base_this_update, base_next_update, base_entries, base_source,
       delta_number, delta_this_update, delta_next_update, delta_entries, delta_source,
       last_error, applied_at, fetched_at, next_fetch_at, validators, applier
FROM ocspd_crl_sources WHERE issuer_id = %(issuer)s;

-- name: record_crl
-- What the claiming replica now has in force, and when the next round is due; the claim ends.
UPDATE ocspd_crl_sources SET
    base_number = %(base_number)s, base_this_update = %(base_this_update)s,
    base_next_update = %(base_next_update)s, base_entries = %(base_entries)s, base_source = %(base_source)s,
    delta_number = %(delta_number)s, delta_this_update = %(delta_this_update)s,
    delta_next_update = %(delta_next_update)s, delta_entries = %(delta_entries)s, delta_source = %(delta_source)s,
    last_error = %(last_error)s, fetched_at = now(), validators = %(validators)s::jsonb,
    applied_at = CASE WHEN %(applied)s THEN now() ELSE applied_at END,
    next_fetch_at = now() + make_interval(secs => %(delay)s), claimed_until = 'epoch'
WHERE issuer_id = %(issuer)s;

-- name: held_serials
SELECT serial FROM ocspd_certificates
WHERE issuer_id = %(issuer)s AND status = 'revoked' AND reason = 'certificateHold';

-- name: release_holds
-- Holds the CRLs in force no longer list (the CA released them).
SELECT count(ocspd_unhold(%(issuer)s, s)) FROM unnest(%(serials)s::text[]) AS s;
