// pgjdbc through pgwarden: driven by tests/client_matrix.rs (see matrix_common.py for the
// environment, which this program reads the same way). Run as a single source file:
// `java -cp postgresql.jar JdbcMatrix.java`. Every check throws on failure; the last line
// printed is "ok".

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.postgresql.PGStatement;

public class JdbcMatrix {
    static final String TABLE = System.getenv("TABLE");
    static final int HELD_ID = Integer.parseInt(System.getenv("HELD_ID"));

    static void check(boolean condition, String what) {
        if (!condition) throw new AssertionError(what);
    }

    static boolean maskedEmail(String value) {
        return value != null && value.endsWith("***@example.com")
            && !value.equals(System.getenv("SECRET_EMAIL"));
    }

    static Connection proxy() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGW_USER"));
        props.setProperty("password", System.getenv("PGW_PASSWORD"));
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", System.getenv("PGW_CA"));
        // Server-side prepared statements from the second execution on.
        props.setProperty("prepareThreshold", "2");
        return DriverManager.getConnection("jdbc:postgresql://" + System.getenv("PGW_HOST") + ":"
            + System.getenv("PGW_PORT") + "/" + System.getenv("PGW_DATABASE"), props);
    }

    static Connection direct() throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", System.getenv("DIRECT_USER"));
        props.setProperty("password", System.getenv("DIRECT_PASSWORD"));
        props.setProperty("sslmode", "disable");
        props.setProperty("prepareThreshold", "2");
        return DriverManager.getConnection("jdbc:postgresql://" + System.getenv("DIRECT_HOST") + ":"
            + System.getenv("DIRECT_PORT") + "/" + System.getenv("PGW_DATABASE"), props);
    }

    /** The rows of `sql` (one int parameter) run five times on one PreparedStatement. */
    static List<List<String>> fiveRuns(Connection conn, String sql, int param) throws SQLException {
        List<List<String>> runs = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int run = 0; run < 5; run++) {
                ps.setInt(1, param);
                List<String> rows = new ArrayList<>();
                try (ResultSet rs = ps.executeQuery()) {
                    int n = rs.getMetaData().getColumnCount();
                    while (rs.next()) {
                        StringBuilder row = new StringBuilder();
                        for (int i = 1; i <= n; i++) row.append(rs.getString(i)).append('|');
                        rows.add(row.toString());
                    }
                }
                runs.add(rows);
            }
            check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "server-prepared");
        }
        return runs;
    }

    static void expectRefused(Statement st, String sql) {
        try {
            st.execute(sql);
        } catch (SQLException e) {
            check("42501".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState() + ": " + e.getMessage());
            check(e.getMessage().contains("pgwarden"), "pgwarden's message: " + e.getMessage());
            return;
        }
        throw new AssertionError(sql + " went through");
    }

    public static void main(String[] args) throws Exception {
        try (Connection conn = proxy(); Connection other = direct(); Statement st = conn.createStatement()) {
            try (ResultSet rs = st.executeQuery("SELECT current_user")) {
                check(rs.next() && rs.getString(1).equals("app_rw"), "upstream role");
            }

            // Results equal a direct connection's, through a PreparedStatement that becomes
            // server-prepared after the threshold (binary transfer for the types pgjdbc knows).
            String sql = "SELECT id, name, now() IS NOT NULL, 1.5::numeric * id, ARRAY[id, ?], "
                + "'2026-11-27 10:00:00+00'::timestamptz FROM " + TABLE + " WHERE id <= 2 ORDER BY id";
            List<List<String>> expected = fiveRuns(other, sql, 7);
            List<List<String>> got = fiveRuns(conn, sql, 7);
            check(got.equals(expected), got + " != " + expected);

            // A masked column, read with getString.
            try (PreparedStatement ps = conn.prepareStatement("SELECT email FROM " + TABLE + " WHERE id = ?")) {
                for (int run = 0; run < 3; run++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next() && maskedEmail(rs.getString(1)), "masked email");
                    }
                }
            }

            // With a fetch size in a transaction, pgjdbc reads the portal a few rows at a time
            // (Execute with a row limit, PortalSuspended in between): every batch is masked.
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT g, c.email FROM generate_series(1, 25) g "
                    + "CROSS JOIN " + TABLE + " c WHERE c.id = ? ORDER BY g")) {
                ps.setFetchSize(4);
                ps.setInt(1, 1);
                int rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        check(maskedEmail(rs.getString(2)), "masked in batch at row " + rs.getInt(1));
                        rows++;
                    }
                }
                check(rows == 25, "fetched rows " + rows);
            }
            conn.commit();
            conn.setAutoCommit(true);

            // Refusals are SQLExceptions with pgwarden's message; the connection stays usable.
            expectRefused(st, "DROP TABLE " + TABLE);
            expectRefused(st, "SELECT pg_read_file('/etc/hostname')");
            try (ResultSet rs = st.executeQuery("SELECT 1")) {
                check(rs.next() && rs.getInt(1) == 1, "usable after refusals");
            }

            // A held statement waits for the DBA, then completes.
            try (PreparedStatement ins = conn.prepareStatement(
                    "INSERT INTO " + TABLE + " VALUES (?, 'held', 'held@example.org')")) {
                ins.setInt(1, HELD_ID);
                check(ins.executeUpdate() == 1, "insert");
            }
            try (PreparedStatement del = conn.prepareStatement("DELETE FROM " + TABLE + " WHERE id = ?")) {
                del.setInt(1, HELD_ID);
                check(del.executeUpdate() == 1, "held DELETE");
            }

            // Batch inserts in a transaction (pgjdbc pipelines the batch).
            st.execute("CREATE TEMP TABLE batched (id int PRIMARY KEY, note text)");
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO batched VALUES (?, ?)")) {
                for (int i = 0; i < 500; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "note " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 500, "batch counts");
            }
            conn.commit();
            conn.setAutoCommit(true);
            try (ResultSet rs = st.executeQuery("SELECT count(*), sum(id) FROM batched")) {
                check(rs.next() && rs.getLong(1) == 500 && rs.getLong(2) == 124750, "batched rows");
            }

            // DatabaseMetaData introspection.
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), "product name");
            try (ResultSet rs = meta.getTables(null, "public", TABLE, new String[] {"TABLE"})) {
                check(rs.next() && rs.getString("TABLE_NAME").equals(TABLE), "getTables");
            }
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "public", TABLE, null)) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            check(columns.equals(List.of("id:int4", "name:text", "email:text")), "getColumns " + columns);
            try (ResultSet rs = meta.getPrimaryKeys(null, "public", TABLE)) {
                check(rs.next() && rs.getString("COLUMN_NAME").equals("id"), "getPrimaryKeys");
            }

            // Statement.cancel() from another thread ends a long query with 57014; it goes once
            // the server shows the sleep running.
            int backend;
            try (ResultSet rs = st.executeQuery("SELECT pg_backend_pid()")) {
                check(rs.next(), "backend pid");
                backend = rs.getInt(1);
            }
            long started = System.nanoTime();
            try (Statement sleeper = conn.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try (PreparedStatement running = other.prepareStatement("SELECT count(*) FROM pg_stat_activity "
                            + "WHERE pid = ? AND state = 'active' AND query LIKE 'SELECT pg_sleep%'")) {
                        running.setInt(1, backend);
                        for (int i = 0; i < 200; i++) {
                            try (ResultSet rs = running.executeQuery()) {
                                if (rs.next() && rs.getLong(1) > 0) break;
                            }
                            Thread.sleep(50);
                        }
                        sleeper.cancel();
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                });
                canceller.start();
                try {
                    sleeper.execute("SELECT pg_sleep(20)");
                    throw new AssertionError("pg_sleep was not cancelled");
                } catch (SQLException e) {
                    check("57014".equals(e.getSQLState()), "cancel: " + e.getSQLState() + " " + e.getMessage());
                }
                canceller.join();
            }
            check(System.nanoTime() - started < 10_000_000_000L, "the cancel took too long");
            try (ResultSet rs = st.executeQuery("SELECT 2")) {
                check(rs.next() && rs.getInt(1) == 2, "usable after a cancel");
            }
        }
        System.out.println("ok");
    }
}
