/*
 * oubli's erasure protocol, a Promela model checked by spin.
 *
 * It follows the code: Erasure (vault/usecases/erasure.py), Rekeying (rekey.py), the
 * writes' compare-and-set (vault/storage/records.py), the finish transaction
 * (vault/storage/erasures.py); and the restore fence of issue 11: an erasure ledger
 * outside the data database and the KMS, appended (fsynced) before a key is destroyed
 * and before a shred is acknowledged, and a fence run at every start before the server
 * serves. docs/keys.md ("The protocol, checked by a machine") says what is modelled and
 * what is not; tests/model/test_erasure_model.py runs the exhaustive search of both
 * configurations and of each variant below. By hand (a trail: `spin -t [-D...] erasure.pml`
 * tells its story):
 *
 *   spin -a [-DRESTORE] erasure.pml && gcc -O2 -DSAFETY -o pan pan.c && ./pan
 *
 * Two configurations, each searched exhaustively:
 *   (default)  concurrency and crashes: ShredSubject(s0), BatchShredSubjects(s0, s1),
 *              a write to each subject, a re-key of s0, side by side; up to MAXCRASH
 *              crashes, each at any step, then the start-up; calls cut by a crash are
 *              made again once the server serves (a shred's client may give up).
 *   -DRESTORE  restores: the same without the writes (they change records only, which
 *              P1 does not read; their one effect on the others, a re-key's failed
 *              compare-and-set, is kept as a choice), plus a backup of the database and
 *              a snapshot of the KMS each taken at any moment, and at each crash the
 *              database and/or the KMS restored from them.
 *   -DRESTORE -DWRITES  both at once: the long run, by hand (about 11 million states).
 *
 * Properties (assertions: a violation is an "assertion violated" error of pan):
 *   P1  once a subject's shred is acknowledged, no later read returns its plaintext.
 *       A read returns plaintext when the server serves (its fence has run since it
 *       last started), the subject's row is writable and the KMS holds its key.
 *   P2  no acknowledged write is lost unless its subject is erased, no subject is
 *       erased unless a shred of it was asked for, and the server serves again after a
 *       crash: checked when every process has stopped, in runs with crashes and no
 *       restore (a restore gives back what the copy held, no more).
 *
 * Variants (-D on spin's command line), each expected to FAIL:
 *   NO_LEDGER       (with RESTORE) the ledger is the database's key_ledger table only; the
 *                   start runs `oubli reconcile` (destroy every key it lists): a restore
 *                   of both the database and the KMS from before a shred resurrects the
 *                   subject (P1).
 *   NO_FENCE_ERASE  (with RESTORE) the fence destroys the keys the ledger names but not the
 *                   subjects it names: a restored database naming a key the ledger never
 *                   heard of (the old key of a re-key stopped before its ledger append,
 *                   alive in the KMS) serves the erased subject again (P1), with no KMS
 *                   restore at all.
 *   NO_KEY_CHECK    the write's compare-and-set checks the record's version but not the
 *                   subject's key: a write sealed under the key a re-key is retiring is
 *                   acknowledged, then unreadable (P2).
 *   RETIRE_BEFORE_COMMIT  a re-key appends its old key to the ledger before its
 *                   compare-and-set commits: a crash between the two, and the fence
 *                   destroys the key the subject still uses (P2).
 *   LEDGER_LOSS     (with RESTORE) the ledger too may go back to an older copy of itself
 *                   (taken at any moment, or none: lost) at a restore. Restored with the
 *                   database and the KMS from before a shred, and no erasure finished
 *                   between the ledger's copy and the database's (so the high-water mark
 *                   cannot tell), it forgets the shred and so does everything else (P1):
 *                   the residual risk, and why the ledger is kept apart from the backups,
 *                   write-once.
 *
 * How a crash is modelled: each process runs its steps in order, `*_pc` naming the next
 * one (0: stopped); a step is one transaction, one KMS call or one ledger append, all
 * or nothing. A crash, at any moment, stops every process at once (every pc to 0,
 * their local state forgotten) and starts the start-up.
 */

#define NS 2            /* subjects s0, s1 */
#define NK 3            /* keys: k0 = s0's, k1 = s1's, k2 = the key a re-key moves s0 to */
#define K2 2
#ifndef MAXCRASH
#define MAXCRASH 2      /* crashes in a run (each may come with restores) */
#endif

/* subjects.state; `closed` behaves as `active` here (writable) */
#define ACTIVE    1
#define SHREDDING 2
#define SHREDDED  3

#define BIT(i) (1 << (i))

/* The data database: what a database backup copies and a restore puts back. */
typedef Database {
  byte state[NS];
  byte key[NS];     /* subjects.key_id */
  byte ver[NS];     /* the subject's record: 0 none, else its version */
  byte rkey[NS];    /* the key its ciphertext is sealed under */
  byte keyled;      /* the key_ledger table: one bit per key */
  byte hwm          /* the ledger's length at the last erasure (high-water mark) */
}
Database db;
Database dbcopy;    /* the database backup */
bool dbcopied;

byte kms = 3;       /* the KMS: one bit per live key; k0 and k1 at the start */
byte kmscopy;       /* the KMS snapshot */
bool kmscopied;

/* The erasure ledger: its own file or database, in neither the data database nor the
 * KMS, never rolled back (but under LEDGER_LOSS). The fence needs its content only. */
byte lkeys;         /* keys it names (destroyed, or about to be) */
byte lsubs;         /* subjects it names as erased */
byte llen;          /* entries appended */
#ifdef LEDGER_LOSS
byte lkeyscopy, lsubscopy, llencopy;
bool lcopied;
#endif

bool serving = true;  /* the server answers calls: its fence has run since it started */
bool refused;         /* the fence found the ledger behind the database */

/* What the clients saw: never rolled back. */
bool acked[NS];       /* a shred of the subject was acknowledged */
bool requested[NS];   /* a shred of the subject was asked for */
byte ackver[NS];      /* the last version of the subject's record acknowledged */
bool restored;        /* a restore happened: P2 is not claimed */

/* Where each process is (0: stopped), and what it holds in memory. */
byte shred_pc[2];     /* call 0: ShredSubject(s0); call 1: BatchShredSubjects(s0, s1) */
byte shred_step[4];   /* per call and subject: 0 none, 1 to append, 2 to destroy, 3 done */
byte shred_key[4];    /* per call and subject: the key to destroy */
byte write_pc[NS];    /* a write to each subject's record */
byte write_key[NS];
byte write_ver[NS];
byte rekey_pc;        /* a re-key of s0 */
byte rekey_key;
byte rekey_ver;
byte start_pc;        /* the start-up after a crash */
byte start_key;
byte start_subject;

#define READABLE(s) (serving && db.state[s] == ACTIVE && (kms & BIT(db.key[s])))
/* P1 can turn false only at a step that makes a subject readable: the server starting
 * to serve, a re-key making or switching to a key. It is asserted in those steps, which
 * is the same as a monitor checking it in every state. */
#define P1 (!(acked[0] && READABLE(0)) && !(acked[1] && READABLE(1)))
#define KEPT(s) (db.state[s] != ACTIVE \
                 || ((kms & BIT(db.key[s])) && db.ver[s] >= ackver[s] \
                     && (db.ver[s] == 0 || db.rkey[s] == db.key[s])))
#define ASKED(s) (requested[s] || db.state[s] == ACTIVE)

/* The building blocks, each inside its caller's atomic step. */

/* KeyManager.destroy_key: idempotent. */
inline destroy(k) {
  kms = kms & ~BIT(k);
  printf("KMS: k%d destroyed\n", k)
}

/* One fsynced append: key k destroyed or about to be; `erased`: as subject s's erasure
 * (else a key a re-key retired). What the ledger holds already is not appended again. */
inline ledger_append(k, s, erased) {
#ifndef NO_LEDGER
  if
  :: !(lkeys & BIT(k)) || (erased && !(lsubs & BIT(s))) ->
     lkeys = lkeys | BIT(k);
     if
     :: erased -> lsubs = lsubs | BIT(s)
     :: else -> skip
     fi;
     llen++;
     printf("ledger: k%d appended (entry %d)\n", k, llen)
  :: else -> skip
  fi
#else
  skip
#endif
}

/* Storage.finish_shreds, one subject: its records deleted, its key into key_ledger,
 * state shredded, the high-water mark; a subject finished already keeps its receipt.
 * From this commit its shred counts as acknowledged, whoever finished it (the call, a
 * retry, the start-up): the earliest moment any caller can hold its receipt. */
inline finish(s) {
  if
  :: db.state[s] != SHREDDED ->
     db.keyled = db.keyled | BIT(db.key[s]);
     db.ver[s] = 0;
     db.state[s] = SHREDDED;
     acked[s] = true;
     printf("database: s%d shredded, receipt written: acknowledged\n", s);
     if
     :: llen > db.hwm -> db.hwm = llen
     :: else -> skip
     fi
  :: else -> skip
  fi
}

/* ShredSubject (call 0: s0) and BatchShredSubjects (call 1: s0 and s1): Erasure._shred,
 * one path. The call reads its subjects, marks the writable ones shredding
 * (Storage.mark_shredding, one transaction) and reads them again: the key to destroy
 * cannot change from there on. Those erased already have their receipt; for each other
 * one the key is appended to the ledger, then destroyed (the subjects side by side, in
 * any order); then Storage.finish_shreds finishes them in one transaction. */

#define STEP(j) shred_step[c * NS + j]
#define KEY(j) shred_key[c * NS + j]

inline begin(j) {
  if
  :: subjects & BIT(j) ->
     requested[j] = true;
     if
     :: db.state[j] == ACTIVE ->
        db.state[j] = SHREDDING;
        printf("shred %d: s%d marked shredding\n", c, j)
     :: else -> skip
     fi;
     if
     :: db.state[j] == SHREDDING -> STEP(j) = 1; KEY(j) = db.key[j]
     :: else -> skip
     fi
  :: else -> skip
  fi
}

inline finish_call(j) {
  if
  :: STEP(j) == 3 -> finish(j)
  :: else -> skip
  fi;
  STEP(j) = 0;
  KEY(j) = 0
}

#define SETTLED(j) (STEP(j) == 0 || STEP(j) == 3)

proctype shred(byte c; byte subjects)
{
end:
  do
  :: d_step { shred_pc[c] == 1 && serving -> begin(0); begin(1); shred_pc[c] = 2 }
  :: d_step { shred_pc[c] == 2 && STEP(0) == 1 -> ledger_append(KEY(0), 0, true); STEP(0) = 2 }
  :: d_step { shred_pc[c] == 2 && STEP(0) == 2 -> destroy(KEY(0)); STEP(0) = 3 }
  :: d_step { shred_pc[c] == 2 && STEP(1) == 1 -> ledger_append(KEY(1), 1, true); STEP(1) = 2 }
  :: d_step { shred_pc[c] == 2 && STEP(1) == 2 -> destroy(KEY(1)); STEP(1) = 3 }
  :: d_step {
       shred_pc[c] == 2 && SETTLED(0) && SETTLED(1) ->
       finish_call(0);
       finish_call(1);
       shred_pc[c] = 0
     }
  od
}

/* CreateRecord (s1, which has no record yet) or UpdateRecord (s0): read the subject and
 * the record, seal under the subject's key, then the compare-and-set under the subject's
 * share lock (Storage.insert_records / Storage.update_record): state writable, key
 * unchanged and, for an update, version unchanged; acknowledged at its commit. When the
 * key changed the code seals again and the client may retry: a later write, which the
 * model covers by letting this one start at any moment. */

#ifndef NO_KEY_CHECK
#define SAME_KEY(s) (db.key[s] == write_key[s])
#else
#define SAME_KEY(s) true
#endif

proctype write(byte s)
{
end:
  do
  :: d_step {
       write_pc[s] == 1 && serving ->
       if
       :: db.state[s] == ACTIVE ->
          write_key[s] = db.key[s]; write_ver[s] = db.ver[s]; write_pc[s] = 2
       :: else -> write_pc[s] = 0   /* SUBJECT_SHREDDED */
       fi
     }
  :: d_step {
       write_pc[s] == 2 ->   /* sealed under write_key[s] (the DEK cached, or one unwrap) */
       if
       :: db.state[s] == ACTIVE && db.ver[s] == write_ver[s] && SAME_KEY(s) ->
          db.ver[s] = write_ver[s] + 1;
          db.rkey[s] = write_key[s];
          ackver[s] = db.ver[s];
          printf("write: s%d record v%d sealed under k%d: acknowledged\n",
                 s, db.ver[s], db.rkey[s])
       :: else -> skip   /* SUBJECT_SHREDDED, or sealed again (a later write) */
       fi;
       write_key[s] = 0;
       write_ver[s] = 0;
       write_pc[s] = 0
     }
  od
}

/* Rekeying.rekey of s0 (WithdrawConsent): the subject read with its records; a new key
 * (KMS); the records sealed under it; Storage.rekey, a compare-and-set on the subject's
 * state and key and the record's version, switches the subject to the new key and puts
 * the old one in key_ledger (retired); then the old key is appended to the ledger and
 * destroyed. A new key that never committed is destroyed. (On a failed compare-and-set
 * the code tries again with the same new key: a later re-key, covered as for writes.) */
proctype rekey()
{
end:
  do
  :: d_step {
       rekey_pc == 1 && serving ->
       if
       :: db.state[0] == ACTIVE ->
          rekey_key = db.key[0]; rekey_ver = db.ver[0]; kms = kms | BIT(K2); rekey_pc = 2;
          printf("re-key: s0 read under k%d, KMS: k2 made\n", rekey_key)
       :: else -> rekey_pc = 0
       fi;
       assert(P1)
     }
  :: d_step {
       rekey_pc == 2 ->
#ifdef RETIRE_BEFORE_COMMIT
       ledger_append(rekey_key, 0, false);
#endif
       if
       :: db.state[0] == ACTIVE && db.key[0] == rekey_key && db.ver[0] == rekey_ver ->
          db.key[0] = K2;
          if :: rekey_ver > 0 -> db.rkey[0] = K2 :: else -> skip fi;
          db.keyled = db.keyled | BIT(rekey_key);
          rekey_pc = 3;
          printf("re-key: s0 moved from k%d to k2 (committed)\n", rekey_key)
       :: else -> rekey_pc = 5
       fi;
       assert(P1)
     }
#if defined(RESTORE) && !defined(WRITES)
  /* the writes left out of this configuration: one changed the record meanwhile */
  :: d_step { rekey_pc == 2 -> printf("re-key: the record changed\n"); rekey_pc = 5 }
#endif
#ifndef RETIRE_BEFORE_COMMIT
  :: d_step { rekey_pc == 3 -> ledger_append(rekey_key, 0, false); rekey_pc = 4 }
#else
  :: d_step { rekey_pc == 3 -> rekey_pc = 4 }
#endif
  :: d_step { rekey_pc == 4 -> destroy(rekey_key); rekey_key = 0; rekey_ver = 0; rekey_pc = 0 }
  :: d_step {
       rekey_pc == 5 ->
       printf("re-key: not committed\n");
       destroy(K2);
       rekey_key = 0; rekey_ver = 0; rekey_pc = 0
     }
  od
}

/* Start-up after a crash, before serving. The fence: refuse to serve if the ledger is
 * behind the database (its high-water mark); destroy again every key the ledger names;
 * mark shredding every subject it names that the database shows writable. One step:
 * it is idempotent, nothing reads meanwhile, and a crash in its middle is followed by a
 * start that does it all again. Then the recovery: each subject left shredding has its
 * key appended to the ledger, destroyed, and is finished, as a retry of its shred
 * would. Then the server serves. */

inline fence_key(keys, j) {
  if
  :: keys & BIT(j) -> destroy(j)
  :: else -> skip
  fi
}

inline fence_subject(j) {
  if
  :: (lsubs & BIT(j)) && db.state[j] == ACTIVE ->
     db.state[j] = SHREDDING; printf("start: s%d marked shredding\n", j)
  :: else -> skip
  fi
}

inline recover_next(j) {
  start_subject = j;
  start_key = db.key[j];
  ledger_append(start_key, j, true);
  start_pc = 3
}

proctype start()
{
end:
  do
  :: d_step {
       start_pc == 1 ->
#ifndef NO_LEDGER
       if
       :: db.hwm > llen ->   /* the ledger is behind */
          refused = true; start_pc = 0;
          printf("start: the ledger is behind the database: refused\n")
       :: else ->
          printf("start: fence\n");
          fence_key(lkeys, 0); fence_key(lkeys, 1); fence_key(lkeys, 2);
#ifndef NO_FENCE_ERASE
          fence_subject(0); fence_subject(1);
#endif
          start_pc = 2
       fi
#else
       /* `oubli reconcile`: every key of the database's own key_ledger */
       printf("start: reconcile\n");
       fence_key(db.keyled, 0); fence_key(db.keyled, 1); fence_key(db.keyled, 2);
       start_pc = 2
#endif
     }
  :: d_step {
       start_pc == 2 ->
       if
       :: db.state[0] == SHREDDING -> recover_next(0)
       :: else ->
          if
          :: db.state[1] == SHREDDING -> recover_next(1)
          :: else -> serving = true; start_pc = 0; printf("start: serving\n"); assert(P1)
          fi
       fi
     }
  :: d_step { start_pc == 3 -> destroy(start_key); start_pc = 4 }
  :: d_step {
       start_pc == 4 -> finish(start_subject); start_key = 0; start_subject = 0; start_pc = 2
     }
  od
}

#ifdef RESTORE
/* Backups, each taken at any moment or never: a consistent copy. */
proctype backup()
{
  do
  :: !dbcopied ->
     d_step {
       dbcopy.state[0] = db.state[0]; dbcopy.state[1] = db.state[1];
       dbcopy.key[0] = db.key[0]; dbcopy.key[1] = db.key[1];
       dbcopy.ver[0] = db.ver[0]; dbcopy.ver[1] = db.ver[1];
       dbcopy.rkey[0] = db.rkey[0]; dbcopy.rkey[1] = db.rkey[1];
       dbcopy.keyled = db.keyled; dbcopy.hwm = db.hwm;
       dbcopied = true;
       printf("backup: database copied\n")
     }
  :: !kmscopied -> d_step { kmscopy = kms; kmscopied = true; printf("backup: KMS snapshot\n") }
#ifdef LEDGER_LOSS
  :: !lcopied ->
     d_step {
       lkeyscopy = lkeys; lsubscopy = lsubs; llencopy = llen; lcopied = true;
       printf("backup: ledger copied\n")
     }
#endif
  :: break
  od
}
#endif

/* A crash, at any moment: every process stops. While the server is down, the operator
 * may restore the database and/or the KMS from their copies. Then the server starts. */
#define RETRY(pc) (pc != 0 -> 1 : 0)

proctype crash()
{
  byte n;
  do
  :: n < MAXCRASH ->
     atomic {
       n++;
       serving = false;
       printf("crash\n");
       /* the calls in flight fail; their clients call again once the server serves (a
        * shred's client may also give up) */
       shred_pc[0] = RETRY(shred_pc[0]); shred_pc[1] = RETRY(shred_pc[1]);
       if :: shred_pc[0] = 0 :: true fi;
       if :: shred_pc[1] = 0 :: true fi;
       shred_step[0] = 0; shred_step[1] = 0; shred_step[2] = 0; shred_step[3] = 0;
       shred_key[0] = 0; shred_key[1] = 0; shred_key[2] = 0; shred_key[3] = 0;
       write_pc[0] = RETRY(write_pc[0]); write_pc[1] = RETRY(write_pc[1]);
       write_key[0] = 0; write_key[1] = 0; write_ver[0] = 0; write_ver[1] = 0;
       rekey_pc = 0; rekey_key = 0; rekey_ver = 0;
       start_key = 0; start_subject = 0;
#ifdef RESTORE
       if
       :: dbcopied ->
          db.state[0] = dbcopy.state[0]; db.state[1] = dbcopy.state[1];
          db.key[0] = dbcopy.key[0]; db.key[1] = dbcopy.key[1];
          db.ver[0] = dbcopy.ver[0]; db.ver[1] = dbcopy.ver[1];
          db.rkey[0] = dbcopy.rkey[0]; db.rkey[1] = dbcopy.rkey[1];
          db.keyled = dbcopy.keyled; db.hwm = dbcopy.hwm;
          restored = true;
          printf("restore: database\n")
       :: true -> skip
       fi;
       if
       :: kmscopied -> kms = kmscopy; restored = true; printf("restore: KMS\n")
       :: true -> skip
       fi;
#endif
#ifdef LEDGER_LOSS
       if
       :: lkeys = lkeyscopy; lsubs = lsubscopy; llen = llencopy; restored = true;
          printf("restore: ledger\n")
       :: true -> skip
       fi;
#endif
       start_pc = 1
     }
  :: break
  od
}

/* P2: when every process has stopped, in a run without a restore. */
proctype p2()
{
  timeout;
  if
  :: !restored ->
     assert(serving);
     assert(KEPT(0) && KEPT(1));
     assert(ASKED(0) && ASKED(1))
  :: else -> skip
  fi
}

/* s0 has one record (acknowledged), s1 none. Every call may start at any moment: a
 * shred of s0, a batch shred of s0 and s1, a write to each, a re-key of s0. */
init
{
  atomic {
    db.state[0] = ACTIVE; db.key[0] = 0; db.ver[0] = 1; db.rkey[0] = 0; ackver[0] = 1;
    db.state[1] = ACTIVE; db.key[1] = 1;
    rekey_pc = 1;
    if :: shred_pc[0] = 1 :: true fi;   /* each shred asked for, or not */
    if :: shred_pc[1] = 1 :: true fi;
    run shred(0, BIT(0));
    run shred(1, BIT(0) | BIT(1));
    run rekey();
#if !defined(RESTORE) || defined(WRITES)
    write_pc[0] = 1; write_pc[1] = 1;
    run write(0);
    run write(1);
#endif
#ifdef RESTORE
    run backup();
#endif
    run crash();
    run p2();
    run start()
  }
}
