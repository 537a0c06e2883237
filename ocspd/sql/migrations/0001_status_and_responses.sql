-- ocspd schema 1: certificate status, pre-signed responses, invalidation.
--
-- Serials are stored as normalised lower-case hex without leading zeros
-- (ocspd_serial() normalises any spelling); the CHECK keeps direct SQL
-- writers honest, since a differently spelled serial would never match.

CREATE SEQUENCE ocspd_status_version_seq;

CREATE TABLE ocspd_certificates (
    issuer_id   text        NOT NULL,
    serial      text        NOT NULL CHECK (serial ~ '^(0|[1-9a-f][0-9a-f]*)$'),
    status      text        NOT NULL DEFAULT 'good' CHECK (status IN ('good', 'revoked')),
    revoked_at  timestamptz,
    reason      text        CHECK (reason IN (
                    'unspecified', 'keyCompromise', 'cACompromise', 'affiliationChanged',
                    'superseded', 'cessationOfOperation', 'certificateHold', 'removeFromCRL',
                    'privilegeWithdrawn', 'aACompromise')),
    not_after   timestamptz,
    -- Changes on every status change (set by trigger, from one sequence, so a
    -- value is never reused even across delete and re-insert).
    version     bigint      NOT NULL DEFAULT nextval('ocspd_status_version_seq'),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_id, serial),
    CONSTRAINT ocspd_revoked_has_time CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    CONSTRAINT ocspd_reason_only_if_revoked CHECK (reason IS NULL OR status = 'revoked')
);

-- Pre-signed responses shared by all replicas, one per CertID hash algorithm.
-- Only certificates present in ocspd_certificates get a row here: answers for
-- unknown serials live in each replica's memory only, so that a certificate
-- inserted later can never race with a stored "unknown".
CREATE TABLE ocspd_responses (
    issuer_id    text        NOT NULL,
    serial       text        NOT NULL,
    hash_alg     text        NOT NULL CHECK (hash_alg IN ('sha1', 'sha256', 'sha384', 'sha512')),
    der          bytea       NOT NULL,
    status       text        NOT NULL,
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    refresh_at   timestamptz NOT NULL,
    cert_version bigint      NOT NULL,
    PRIMARY KEY (issuer_id, serial, hash_alg)
);
CREATE INDEX ocspd_responses_refresh_at ON ocspd_responses (refresh_at);

CREATE FUNCTION ocspd_serial(raw text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN s = '' THEN '0' ELSE s END
    FROM (SELECT ltrim(regexp_replace(lower(regexp_replace(raw, '^\s*0[xX]', '')), '[\s:]', '', 'g'), '0') AS s) AS n
$$;

-- A new status version whenever the status changes, whoever writes.
CREATE FUNCTION ocspd_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT'
       OR NEW.status IS DISTINCT FROM OLD.status
       OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
       OR NEW.reason IS DISTINCT FROM OLD.reason
       OR NEW.issuer_id IS DISTINCT FROM OLD.issuer_id
       OR NEW.serial IS DISTINCT FROM OLD.serial THEN
        NEW.version := nextval('ocspd_status_version_seq');
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ocspd_bump_version BEFORE INSERT OR UPDATE ON ocspd_certificates
    FOR EACH ROW EXECUTE FUNCTION ocspd_bump_version();

-- Invalidation: in the writer's transaction, delete the stale pre-signed
-- rows and NOTIFY every replica (delivered at commit). Channel names are
-- versioned so that a future payload format can run beside this one.
-- Payload: '<issuer_id> <serial hex>', or '<issuer_id> *' after a bulk change.
CREATE FUNCTION ocspd_invalidate(changed_keys jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n integer := jsonb_array_length(changed_keys);
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    DELETE FROM ocspd_responses r
    USING jsonb_to_recordset(changed_keys) AS k(issuer_id text, serial text)
    WHERE r.issuer_id = k.issuer_id AND r.serial = k.serial;
    IF n > 1000 THEN
        -- A bulk import: one flush per issuer beats a million notifications.
        PERFORM pg_notify('ocspd_status_v1', i.issuer_id || ' *')
        FROM (SELECT DISTINCT issuer_id FROM jsonb_to_recordset(changed_keys) AS k(issuer_id text, serial text)) AS i;
    ELSE
        PERFORM pg_notify('ocspd_status_v1', k.issuer_id || ' ' || k.serial)
        FROM jsonb_to_recordset(changed_keys) AS k(issuer_id text, serial text);
    END IF;
END
$$;

CREATE FUNCTION ocspd_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ocspd_invalidate(COALESCE(
        (SELECT jsonb_agg(jsonb_build_object('issuer_id', issuer_id, 'serial', serial)) FROM new_rows), '[]'));
    RETURN NULL;
END
$$;

CREATE FUNCTION ocspd_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ocspd_invalidate(COALESCE((
        SELECT jsonb_agg(jsonb_build_object('issuer_id', k.issuer_id, 'serial', k.serial))
        FROM (
            SELECT o.issuer_id, o.serial FROM old_rows o
            JOIN new_rows n ON n.issuer_id = o.issuer_id AND n.serial = o.serial
            WHERE n.version <> o.version
            UNION
            -- a row whose key changed: both the old and the new key are affected
            SELECT o.issuer_id, o.serial FROM old_rows o
            WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.issuer_id = o.issuer_id AND n.serial = o.serial)
            UNION
            SELECT n.issuer_id, n.serial FROM new_rows n
            WHERE NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.issuer_id = n.issuer_id AND o.serial = n.serial)
        ) AS k), '[]'));
    RETURN NULL;
END
$$;

CREATE FUNCTION ocspd_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ocspd_invalidate(COALESCE(
        (SELECT jsonb_agg(jsonb_build_object('issuer_id', issuer_id, 'serial', serial)) FROM old_rows), '[]'));
    RETURN NULL;
END
$$;

CREATE FUNCTION ocspd_after_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ocspd_responses;
    PERFORM pg_notify('ocspd_status_v1', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER ocspd_after_insert AFTER INSERT ON ocspd_certificates
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ocspd_after_insert();
CREATE TRIGGER ocspd_after_update AFTER UPDATE ON ocspd_certificates
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ocspd_after_update();
CREATE TRIGGER ocspd_after_delete AFTER DELETE ON ocspd_certificates
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ocspd_after_delete();
CREATE TRIGGER ocspd_after_truncate AFTER TRUNCATE ON ocspd_certificates
    FOR EACH STATEMENT EXECUTE FUNCTION ocspd_after_truncate();

-- For CAs that write SQL directly (see README): add, and revoke.
CREATE FUNCTION ocspd_add_certificate(p_issuer text, p_serial text, p_not_after timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO ocspd_certificates (issuer_id, serial, not_after)
    VALUES (p_issuer, ocspd_serial(p_serial), p_not_after)
    ON CONFLICT (issuer_id, serial) DO UPDATE SET not_after = COALESCE(EXCLUDED.not_after, ocspd_certificates.not_after)
    RETURNING version
$$;

-- Revoking a serial the table does not list yet records it as revoked:
-- the CA's word is the truth, whether or not the issuance was imported.
CREATE FUNCTION ocspd_revoke(p_issuer text, p_serial text, p_reason text DEFAULT NULL,
                             p_at timestamptz DEFAULT now())
RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO ocspd_certificates (issuer_id, serial, status, revoked_at, reason)
    VALUES (p_issuer, ocspd_serial(p_serial), 'revoked', p_at, p_reason)
    ON CONFLICT (issuer_id, serial) DO UPDATE
        SET status = 'revoked', revoked_at = EXCLUDED.revoked_at, reason = EXCLUDED.reason
    RETURNING version
$$;
