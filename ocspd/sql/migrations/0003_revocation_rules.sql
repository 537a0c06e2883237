-- ocspd schema 3: revocation is one-way, whoever writes (SPEC §3 invariant 9).
--
-- The rules live here, in a trigger, so that ocspd's CLI, a CA writing SQL
-- and a psql session are all held to them. A writer that breaks one gets
-- SQLSTATE 23R01 (class 23, integrity constraint violation: drivers raise it
-- as an integrity error) and a message naming the certificate and the rule.
--
-- * A certificate revoked with any reason but certificateHold (or with no
--   reason) is revoked for good: it never becomes good again, its time and
--   reason change only by an explicit amendment (ocspd_revoke with
--   p_amend => true), never into certificateHold, and its row cannot be
--   deleted, re-keyed or truncated away before its not_after has passed.
-- * A hold (certificateHold) is released only by ocspd_unhold(); it may be
--   re-revoked with another reason (RFC 5280 §5.3.1), at the new time.
-- * unspecified is stored as NULL (RFC 5280: the reasonCode SHOULD be absent
--   rather than unspecified); removeFromCRL is a delta-CRL marker, not a
--   revocation reason, and is refused; a revocation time more than a minute
--   after the database's clock (skew between a CA and the database) is refused.

-- Rows written before these rules: a stored unspecified becomes NULL, and a
-- removeFromCRL "revocation" stays a revocation without a reason (it is
-- never served as an OCSP reason, and never turned back into "good").
UPDATE ocspd_certificates SET reason = NULL WHERE reason IN ('unspecified', 'removeFromCRL');

ALTER TABLE ocspd_certificates DROP CONSTRAINT ocspd_certificates_reason_check;
ALTER TABLE ocspd_certificates ADD CONSTRAINT ocspd_certificates_reason_check CHECK (reason IN (
    'keyCompromise', 'cACompromise', 'affiliationChanged', 'superseded', 'cessationOfOperation',
    'certificateHold', 'privilegeWithdrawn', 'aACompromise'));

-- How a revocation of a row may be followed by another state (the one
-- statement of the rules that the trigger, the import and the CLI share).
-- 'apply': the new state supersedes the old one (a revocation of a good or
-- unlisted serial, a hold made permanent); 'same': nothing changes;
-- 'keep': the old revocation stays (an import offering "good" or another
-- revocation); the caller decides whether that is an error.
CREATE FUNCTION ocspd_merge(old_status text, old_reason text, old_at timestamptz,
                            new_status text, new_reason text, new_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN old_status IS NULL OR old_status = 'good' THEN
            CASE WHEN new_status = 'revoked' THEN 'apply' ELSE 'same' END
        WHEN new_status = 'revoked' AND new_reason IS NOT DISTINCT FROM old_reason
             AND new_at IS NOT DISTINCT FROM old_at THEN 'same'
        WHEN old_reason = 'certificateHold' AND new_status = 'revoked'
             AND new_reason IS DISTINCT FROM 'certificateHold' THEN 'apply'
        ELSE 'keep'
    END
$$;

CREATE FUNCTION ocspd_rule_violation(issuer_id text, serial text, old_reason text, old_at timestamptz,
                                     rule text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'serial % of issuer % is revoked (%, since %): %', upper(serial), issuer_id,
        coalesce(old_reason, 'no reason'), to_char(old_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), rule
        USING ERRCODE = '23R01';
END
$$;

-- Whether the statement being checked runs inside ocspd function ``fn``, which
-- has also marked its transaction with the setting ``mark``: an amendment and a
-- hold's release are the acts of ocspd_revoke(p_amend => true) and
-- ocspd_unhold(), not of a plain UPDATE (which cannot put them on the stack).
CREATE FUNCTION ocspd_called_by(fn text, mark text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    stack text;
BEGIN
    IF coalesce(current_setting(mark, true), '') <> 'on' THEN
        RETURN false;
    END IF;
    GET DIAGNOSTICS stack = PG_CONTEXT;
    RETURN position(E'\nPL/pgSQL function ' || fn || '(' IN stack) > 0;
END
$$;

CREATE FUNCTION ocspd_revocation_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held boolean;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NEW.reason = 'unspecified' THEN
            NEW.reason := NULL;
        ELSIF NEW.reason = 'removeFromCRL' THEN
            RAISE EXCEPTION 'serial % of issuer %: removeFromCRL is not a revocation reason (a delta-CRL marker, RFC 5280 §5.3.1)',
                upper(NEW.serial), NEW.issuer_id USING ERRCODE = '23R01';
        END IF;
        -- A minute of clock skew between a CA's clock and the database's is tolerated.
        IF NEW.revoked_at > now() + interval '1 minute' THEN
            RAISE EXCEPTION 'serial % of issuer %: revocation time % is in the future', upper(NEW.serial),
                NEW.issuer_id, to_char(NEW.revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                USING ERRCODE = '23R01';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' THEN
        RETURN NEW;
    ELSIF OLD.status <> 'revoked' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    held := OLD.reason IS NOT DISTINCT FROM 'certificateHold';
    IF TG_OP = 'DELETE' THEN
        IF OLD.not_after IS NULL OR OLD.not_after > now() THEN
            PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
                'its row stays until the certificate expires (not_after)');
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.issuer_id IS DISTINCT FROM OLD.issuer_id OR NEW.serial IS DISTINCT FROM OLD.serial THEN
        PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
            'its issuer and serial cannot change');
    END IF;
    IF NEW.status = 'good' THEN
        IF NOT held THEN
            PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
                'a revocation is permanent, it never becomes good again');
        ELSIF NOT ocspd_called_by('ocspd_unhold', 'ocspd.release_hold') THEN
            PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
                'a hold is released only by ocspd_unhold() (ocspd unhold)');
        END IF;
        RETURN NEW;
    END IF;
    CASE ocspd_merge(OLD.status, OLD.reason, OLD.revoked_at, NEW.status, NEW.reason, NEW.revoked_at)
    WHEN 'same', 'apply' THEN
        NULL;
    ELSE
        IF NOT ocspd_called_by('ocspd_revoke', 'ocspd.amend') THEN
            PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
                'its time and reason change only by an amendment (ocspd revoke --amend)');
        ELSIF NEW.reason IS NOT DISTINCT FROM 'certificateHold' AND NOT held THEN
            PERFORM ocspd_rule_violation(OLD.issuer_id, OLD.serial, OLD.reason, OLD.revoked_at,
                'a permanent revocation cannot become a hold');
        END IF;
    END CASE;
    RETURN NEW;
END
$$;

CREATE FUNCTION ocspd_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ocspd_certificates
               WHERE status = 'revoked' AND (not_after IS NULL OR not_after > now())) THEN
        RAISE EXCEPTION 'ocspd_certificates holds revocations of certificates not yet expired: it cannot be truncated'
            USING ERRCODE = '23R01';
    END IF;
    RETURN NULL;
END
$$;

-- BEFORE row triggers fire in name order: the rules (which may normalise the
-- row) run before the version is bumped from what is finally written.
ALTER TRIGGER ocspd_bump_version ON ocspd_certificates RENAME TO ocspd_2_bump_version;
-- Only rows that are or become revoked enter the function (the WHEN is checked
-- without it: a bulk import of good certificates pays next to nothing).
CREATE TRIGGER ocspd_1_revocation_rules BEFORE INSERT ON ocspd_certificates
    FOR EACH ROW WHEN (NEW.status = 'revoked') EXECUTE FUNCTION ocspd_revocation_rules();
CREATE TRIGGER ocspd_1_revocation_rules_update BEFORE UPDATE ON ocspd_certificates
    FOR EACH ROW WHEN (OLD.status = 'revoked' OR NEW.status = 'revoked') EXECUTE FUNCTION ocspd_revocation_rules();
CREATE TRIGGER ocspd_1_revocation_rules_delete BEFORE DELETE ON ocspd_certificates
    FOR EACH ROW WHEN (OLD.status = 'revoked') EXECUTE FUNCTION ocspd_revocation_rules();
CREATE TRIGGER ocspd_1_refuse_truncate BEFORE TRUNCATE ON ocspd_certificates
    FOR EACH STATEMENT EXECUTE FUNCTION ocspd_refuse_truncate();

-- For CAs that write SQL: revoke (idempotent: the same revocation again is no
-- change; another one is refused unless p_amend), and release a hold.
DROP FUNCTION ocspd_revoke(text, text, text, timestamptz);
CREATE FUNCTION ocspd_revoke(p_issuer text, p_serial text, p_reason text DEFAULT NULL,
                             p_at timestamptz DEFAULT NULL, p_amend boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_serial text := ocspd_serial(p_serial);
    v_reason text := NULLIF(p_reason, 'unspecified');
    old ocspd_certificates;
    v_version bigint;
BEGIN
    SELECT * INTO old FROM ocspd_certificates WHERE issuer_id = p_issuer AND serial = v_serial FOR UPDATE;
    IF NOT FOUND THEN
        -- Not listed yet: the CA's word is the truth, whether or not the issuance was imported.
        INSERT INTO ocspd_certificates (issuer_id, serial, status, revoked_at, reason)
        VALUES (p_issuer, v_serial, 'revoked', coalesce(p_at, now()), v_reason)
        ON CONFLICT (issuer_id, serial) DO NOTHING
        RETURNING version INTO v_version;
        IF v_version IS NOT NULL THEN
            RETURN v_version;
        END IF;
        -- Inserted by someone else meanwhile: decide against that row.
        SELECT * INTO old FROM ocspd_certificates WHERE issuer_id = p_issuer AND serial = v_serial FOR UPDATE;
    END IF;
    IF old.status = 'revoked' AND v_reason IS NOT DISTINCT FROM old.reason
       AND (p_at IS NULL OR p_at = old.revoked_at) THEN
        RETURN old.version;  -- the same revocation again
    END IF;
    IF p_amend THEN
        PERFORM set_config('ocspd.amend', 'on', true);
    END IF;
    UPDATE ocspd_certificates
       SET status = 'revoked', reason = v_reason,
           -- an amendment of a permanent revocation keeps its time unless given one;
           -- a hold made permanent is revoked at the new time
           revoked_at = CASE WHEN old.status = 'revoked' AND old.reason IS DISTINCT FROM 'certificateHold'
                                  AND p_amend AND p_at IS NULL THEN old.revoked_at
                             ELSE coalesce(p_at, now()) END
     WHERE issuer_id = p_issuer AND serial = v_serial
    RETURNING version INTO v_version;
    PERFORM set_config('ocspd.amend', '', true);
    RETURN v_version;
END
$$;

CREATE FUNCTION ocspd_unhold(p_issuer text, p_serial text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_serial text := ocspd_serial(p_serial);
    old ocspd_certificates;
    v_version bigint;
BEGIN
    SELECT * INTO old FROM ocspd_certificates WHERE issuer_id = p_issuer AND serial = v_serial FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'serial % of issuer % is not listed: there is no hold to release', upper(v_serial), p_issuer
            USING ERRCODE = '23R01';
    END IF;
    IF old.status <> 'revoked' THEN
        RAISE EXCEPTION 'serial % of issuer % is good: there is no hold to release', upper(v_serial), p_issuer
            USING ERRCODE = '23R01';
    END IF;
    IF old.reason IS DISTINCT FROM 'certificateHold' THEN
        PERFORM ocspd_rule_violation(p_issuer, v_serial, old.reason, old.revoked_at,
            'only a certificateHold can be released');
    END IF;
    PERFORM set_config('ocspd.release_hold', 'on', true);
    UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL
     WHERE issuer_id = p_issuer AND serial = v_serial
    RETURNING version INTO v_version;
    PERFORM set_config('ocspd.release_hold', '', true);
    RETURN v_version;
END
$$;
